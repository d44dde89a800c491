"""Configuration: schema, loading and validation, dumping."""

from balancer.config.errors import ConfigError
from balancer.config.load import parse_config, read_config_file, server_from_mapping
from balancer.config.schema import Config, ServerConfig

__all__ = ["Config", "ConfigError", "ServerConfig", "parse_config", "read_config_file", "server_from_mapping"]
