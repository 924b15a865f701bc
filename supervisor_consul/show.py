"""`supervisor-consul check --show`: the registration the listener would send
for every process, without asking Consul anything.

The bodies are the very ones the agent gets (instance.Registration.payload);
the process-state check is shown as registered, critical until the listener
sets it.  A `check = none` instance is shown with the liveness alias it gets
while the listener holds its supervisord's claim, as it does when it runs.
"""

from __future__ import annotations

import json
from typing import Any

from . import instance
from .config import Configuration
from .health import CRITICAL
from .logtext import escaped


def payloads(configuration: Configuration, host: str) -> list[dict[str, Any]]:
    owner = instance.owner_of(host, configuration)
    return [{"process": spec.namespec, "service": spec.name,
             "register": instance.of(spec, owner, host, claimed=True).payload(CRITICAL)}
            for _, spec in sorted(configuration.services.items())]


def as_json(configuration: Configuration, host: str) -> str:
    return json.dumps(payloads(configuration, host), indent=1)


def text(configuration: Configuration, host: str) -> list[str]:
    lines = []
    for shown in payloads(configuration, host):
        body = shown["register"]
        address = f"{body['Address'] or '<node>'}:{body['Port'] or '-'}"
        lines.append(f"{shown['process']}  {body['Name']}  {body['ID']}  {address}")
        for field, value in body.items():
            if field not in ("ID", "Name", "Address", "Port", "Checks") and value not in ([], {}):
                lines.append(f"    {field}: {_flat(value)}")
        for check in body["Checks"]:
            settings = ", ".join(f"{k}={_flat(v)}" for k, v in check.items() if k not in ("CheckID", "Name"))
            lines.append(f"    check {check['Name']} ({check['CheckID']}): {settings}")
    # A configuration is the user's text: shown escaped, as every line we print of it.
    return [escaped(line) for line in lines] or ["no process has a [consul:*] section"]


def _flat(value: Any, nested: bool = False) -> str:
    if isinstance(value, dict):
        pairs = ", ".join(f"{k}={_flat(v, True)}" for k, v in value.items())
        return f"{{{pairs}}}" if nested else pairs
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    return json.dumps(value) if isinstance(value, str) and (not value or value != value.strip()) else str(value)
