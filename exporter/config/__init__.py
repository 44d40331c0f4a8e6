"""The exporter's configuration: typed, with every default in one place, validated once at load."""

from exporter.config.addresses import AddressError
from exporter.config.load import check_state, expand_ids_file, load_config, parse_config
from exporter.config.model import (API_KEY_ENV, DEFAULT_DURATION_BUCKETS, REGISTRATION_TOKEN_ENV, RING_GONE, ApiConfig, Config,
                                   ConfigError, JobGroup, MetricsConfig, PollConfig, PricingConfig, ProxyConfig, Secret,
                                   StateConfig, WebConfig)
from exporter.config.pricing import Price, PriceTable

__all__ = ["API_KEY_ENV", "DEFAULT_DURATION_BUCKETS", "REGISTRATION_TOKEN_ENV", "RING_GONE", "AddressError", "ApiConfig", "Config",
           "ConfigError", "JobGroup", "MetricsConfig", "PollConfig", "Price", "PriceTable", "PricingConfig",
           "ProxyConfig", "Secret", "StateConfig", "WebConfig", "check_state", "expand_ids_file",
           "load_config", "parse_config"]
