#!/usr/bin/env python3
"""Start the gateway listeners (creating missing certificates first), or --check the config."""

from gateway.cli import run_gateway_main

if __name__ == "__main__":
    raise SystemExit(run_gateway_main())
