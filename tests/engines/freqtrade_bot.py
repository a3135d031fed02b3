"""A real Freqtrade dry-run bot on the synthetic exchange: its config, its strategy, its process.

Test infrastructure: the bot trades three pairs, enters each as soon as it may and leaves one at
once, so a test sees entries, an exit and open trades within seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENGINES_VENV = ROOT / ".venv-engines"
FREQTRADE = ENGINES_VENV / "bin" / "freqtrade"
ENGINES_PYTHON = ENGINES_VENV / "bin" / "python"

STRATEGY = '''
from pandas import DataFrame
from freqtrade.strategy import IStrategy


class Churn(IStrategy):
    """Enters every pair whenever it may; leaves ETH/USDT at once and holds the others, so
    that a kill finds open trades to force-exit. Freqtrade locks a pair for the rest of its
    candle after an exit: ETH/USDT trades once a minute."""

    INTERFACE_VERSION = 3
    timeframe = "1m"
    minimal_roi = {"0": 100}
    stoploss = -0.99
    startup_candle_count = 0
    process_only_new_candles = False

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["exit_long"] = 0
        return dataframe

    def custom_exit(self, pair, trade, current_time, current_rate, current_profit, **kwargs):
        return "churn" if pair == "ETH/USDT" else None
'''


PAIRS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
MARKETS = {"BTCUSDT": ("BTC", "USDT", 60_000.0), "ETHUSDT": ("ETH", "USDT", 3_000.0),
           "SOLUSDT": ("SOL", "USDT", 150.0)}  # fmt: skip


def bot_config(
    *, ccxt_urls: dict[str, Any], api_port: int, username: str, password: str, db_url: str
) -> dict[str, Any]:
    ccxt = {"urls": ccxt_urls, "options": {"fetchMarkets": {"types": ["spot"]}}}
    return {
        "dry_run": True,
        "dry_run_wallet": 1000,
        "db_url": db_url,
        "initial_state": "running",
        "max_open_trades": 3,
        "stake_currency": "USDT",
        "stake_amount": 50,
        "tradable_balance_ratio": 0.99,
        "fiat_display_currency": "",
        "timeframe": "1m",
        "trading_mode": "spot",
        "margin_mode": "",
        "unfilledtimeout": {"entry": 10, "exit": 10, "unit": "minutes"},
        "entry_pricing": {"price_side": "other", "use_order_book": True, "order_book_top": 1},
        "exit_pricing": {"price_side": "other", "use_order_book": True, "order_book_top": 1},
        "order_types": {
            "entry": "market",
            "exit": "market",
            "stoploss": "market",
            "stoploss_on_exchange": False,
        },
        "exchange": {
            "name": "binance",
            "key": "",
            "secret": "",
            "ccxt_config": ccxt,
            "ccxt_async_config": ccxt,
            "pair_whitelist": PAIRS,
            "pair_blacklist": [],
            "skip_pair_validation": True,
            "enable_ws": False,
        },
        "pairlists": [{"method": "StaticPairList"}],
        "api_server": {
            "enabled": True,
            "listen_ip_address": "127.0.0.1",
            "listen_port": api_port,
            "verbosity": "error",
            "enable_openapi": False,
            "jwt_secret_key": "synthetic-exchange-test-secret-0123456789",
            "CORS_origins": [],
            "username": username,
            "password": password,
        },
        "bot_name": "churn",
        "telegram": {"enabled": False, "token": "", "chat_id": ""},
        "internals": {"process_throttle_secs": 1, "heartbeat_interval": 0},
        "dataformat_ohlcv": "feather",
        "user_data_dir": "",
    }


def write_bot(userdir: Path, config: dict[str, Any]) -> Path:
    """Write the strategy and the config under ``userdir``; return the config's path."""
    (userdir / "strategies").mkdir(parents=True, exist_ok=True)
    (userdir / "strategies" / "churn.py").write_text(STRATEGY)
    path = userdir / "config.json"
    path.write_text(json.dumps({**config, "user_data_dir": str(userdir)}, indent=1))
    return path


def start_bot(userdir: Path, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    # Not PYTEST_*: Freqtrade sets up no logging at all (no --logfile) when it sees PYTEST_VERSION.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE", "PYTEST"))
    }
    # No proxy, no way out: the bot must reach only the synthetic exchange.
    env.update({"NO_PROXY": "*", "no_proxy": "*"})
    cmd = [
        str(FREQTRADE),
        "trade",
        "--config",
        str(config_path),
        "--strategy",
        "Churn",
        "--strategy-path",
        str(userdir / "strategies"),
        "--userdir",
        str(userdir),
        "--logfile",
        str(log_path),
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=userdir
    )


if __name__ == "__main__":  # pragma: no cover - a manual run: python -m tests.engines.freqtrade_bot
    import tempfile
    import time

    from tests.engines.synthetic_exchange import SyntheticExchange, SyntheticMarket

    ex = SyntheticExchange(SyntheticMarket(MARKETS)).start()
    tmp = Path(tempfile.mkdtemp())
    cfg = bot_config(
        ccxt_urls=ex.ccxt_urls(),
        api_port=int(sys.argv[1]) if len(sys.argv) > 1 else 18080,
        username="ft",
        password="pw",
        db_url=f"sqlite:///{tmp}/trades.sqlite",
    )
    t0 = time.time()
    proc = start_bot(tmp, write_bot(tmp, cfg), tmp / "bot.log")
    try:
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 25)
    finally:
        proc.terminate()
        proc.wait()
    print(tmp, sorted(set(ex.requests)), ex.unknown)
