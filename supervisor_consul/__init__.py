"""supervisor-consul: a supervisord event listener that keeps Consul in step with supervisord."""

__version__ = "0.1.0"
