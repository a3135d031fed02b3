"""A local stand-in for Binance's public spot REST API, for running a real Freqtrade bot offline.

It answers only the few endpoints ccxt's binance class calls for a dry-run spot bot (markets,
candles, tickers, order book, server time), from a seeded synthetic price: the same seed and the
same minute always give the same price, so a restarted bot sees the same market. Every request is
recorded, and one it does not know is answered 404 and recorded in ``unknown``, so a test can
check the bot asked for nothing else. Test infrastructure, not product.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# Every URL of ccxt's binance `urls.api` points here (the ccxt config override).
PATH_OF = {
    "sapi": "/sapi/v1",
    "sapiV2": "/sapi/v2",
    "sapiV3": "/sapi/v3",
    "sapiV4": "/sapi/v4",
    "dapiPublic": "/dapi/v1",
    "dapiPrivate": "/dapi/v1",
    "eapiPublic": "/eapi/v1",
    "eapiPrivate": "/eapi/v1",
    "dapiPrivateV2": "/dapi/v2",
    "dapiData": "/futures/data",
    "fapiPublic": "/fapi/v1",
    "fapiPublicV2": "/fapi/v2",
    "fapiPublicV3": "/fapi/v3",
    "fapiPrivate": "/fapi/v1",
    "fapiPrivateV2": "/fapi/v2",
    "fapiPrivateV3": "/fapi/v3",
    "fapiData": "/futures/data",
    "public": "/api/v3",
    "private": "/api/v3",
    "v1": "/api/v1",
    "papi": "/papi/v1",
    "papiV2": "/papi/v2",
}
API_KEYS = list(PATH_OF)
INTERVAL_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


class SyntheticMarket:
    """Prices as a pure function of (seed, symbol, minute): no state, so any window is cheap."""

    def __init__(self, symbols: dict[str, tuple[str, str, float]], seed: int = 7) -> None:
        self.symbols = symbols  # "BTCUSDT" -> ("BTC", "USDT", base price)
        self.seed = seed

    def _noise(self, symbol: str, n: int) -> float:
        digest = hashlib.sha256(f"{self.seed}:{symbol}:{n}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 - 0.5

    def price(self, symbol: str, ts_ms: int) -> float:
        base = self.symbols[symbol][2]
        minute = ts_ms // 60_000
        wave = 0.02 * math.sin(minute / 7) + 0.01 * math.sin(minute / 2.3)
        # A small wobble within the minute, so that tickers move between the bot's loops.
        wobble = 0.001 * self._noise(symbol, ts_ms // 1000)
        return round(base * (1 + wave + 0.004 * self._noise(symbol, minute) + wobble), 2)

    def candle(self, symbol: str, open_ms: int, interval_ms: int) -> list[Any]:
        points = [self.price(symbol, open_ms + k * 60_000) for k in range(interval_ms // 60_000)]
        close = self.price(symbol, open_ms + interval_ms - 1)
        high, low = max(*points, close), min(*points, close)
        volume = 10 + abs(self._noise(symbol, open_ms)) * 20
        return [
            open_ms,
            f"{points[0]:.2f}",
            f"{high:.2f}",
            f"{low:.2f}",
            f"{close:.2f}",
            f"{volume:.5f}",
            open_ms + interval_ms - 1,
            f"{volume * close:.2f}",
            100,
            f"{volume / 2:.5f}",
            f"{volume * close / 2:.2f}",
            "0",
        ]


class SyntheticExchange:
    """The HTTP server in a thread; ``ccxt_urls()`` is what to put in Freqtrade's ccxt config."""

    def __init__(self, market: SyntheticMarket, host: str = "127.0.0.1", port: int = 0) -> None:
        self.market = market
        self.requests: list[str] = []
        self.unknown: list[str] = []
        self._lock = threading.Lock()
        handler = self._handler_class()
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        # A short poll interval: shutdown() waits for it, at every test's end.
        serve = lambda: self.server.serve_forever(poll_interval=0.05)  # noqa: E731
        self.thread = threading.Thread(target=serve, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def ccxt_urls(self) -> dict[str, Any]:
        return {"api": {key: self.base_url + PATH_OF[key] for key in API_KEYS}}

    def start(self) -> SyntheticExchange:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- endpoints ---

    def exchange_info(self) -> dict[str, Any]:
        symbols = [
            {
                "symbol": symbol,
                "status": "TRADING",
                "baseAsset": base,
                "baseAssetPrecision": 8,
                "quoteAsset": quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT"],
                "icebergAllowed": True,
                "ocoAllowed": True,
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": "0.01",
                        "maxPrice": "1000000.00",
                        "tickSize": "0.01",
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": "0.00001",
                        "maxQty": "9000.00000",
                        "stepSize": "0.00001",
                    },
                    {"filterType": "NOTIONAL", "minNotional": "5.00", "maxNotional": "9000000"},
                ],
                "permissions": ["SPOT"],
                "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "NONE",
                "allowedSelfTradePreventionModes": ["NONE"],
            }
            for symbol, (base, quote, _) in self.market.symbols.items()
        ]
        return {
            "timezone": "UTC",
            "serverTime": int(time.time() * 1000),
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def klines(self, query: dict[str, str]) -> list[list[Any]]:
        symbol = query["symbol"]
        interval = INTERVAL_MS[query.get("interval", "1m")]
        limit = min(int(query.get("limit", 500)), 1000)
        now = int(time.time() * 1000)
        if "startTime" in query:
            first = int(query["startTime"]) // interval * interval
        else:
            first = (now // interval - limit + 1) * interval
        end = min(int(query.get("endTime", now)), now)
        out = []
        open_ms = first
        while open_ms <= end and len(out) < limit:
            out.append(self.market.candle(symbol, open_ms, interval))
            open_ms += interval
        return out

    def ticker(self, symbol: str) -> dict[str, Any]:
        now = int(time.time() * 1000)
        last = self.market.price(symbol, now)
        day_open = self.market.price(symbol, now - 86_400_000)
        return {
            "symbol": symbol,
            "priceChange": f"{last - day_open:.2f}",
            "priceChangePercent": f"{(last / day_open - 1) * 100:.3f}",
            "weightedAvgPrice": f"{last:.2f}",
            "prevClosePrice": f"{day_open:.2f}",
            "lastPrice": f"{last:.2f}",
            "lastQty": "0.1",
            "bidPrice": f"{last - 0.01:.2f}",
            "bidQty": "5.0",
            "askPrice": f"{last + 0.01:.2f}",
            "askQty": "5.0",
            "openPrice": f"{day_open:.2f}",
            "highPrice": f"{max(last, day_open) * 1.01:.2f}",
            "lowPrice": f"{min(last, day_open) * 0.99:.2f}",
            "volume": "1000.0",
            "quoteVolume": f"{1000 * last:.2f}",
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 1,
            "lastId": 1000,
            "count": 1000,
        }

    def depth(self, symbol: str, limit: int) -> dict[str, Any]:
        last = self.market.price(symbol, int(time.time() * 1000))
        bids = [[f"{last - 0.01 * (k + 1):.2f}", "5.00000"] for k in range(limit)]
        asks = [[f"{last + 0.01 * (k + 1):.2f}", "5.00000"] for k in range(limit)]
        return {"lastUpdateId": int(time.time()), "bids": bids, "asks": asks}

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        symbols = self.market.symbols
        if path == "/api/v3/exchangeInfo":
            return 200, self.exchange_info()
        if path in ("/fapi/v1/exchangeInfo", "/dapi/v1/exchangeInfo"):
            return 200, {"timezone": "UTC", "serverTime": 0, "rateLimits": [], "symbols": []}
        if path == "/api/v3/time":
            return 200, {"serverTime": int(time.time() * 1000)}
        if path == "/api/v3/ping":
            return 200, {}
        if path == "/api/v3/klines" and query.get("symbol") in symbols:
            return 200, self.klines(query)
        if path in ("/api/v3/ticker/24hr", "/api/v3/ticker/bookTicker", "/api/v3/ticker/price"):
            if "symbol" in query:
                if query["symbol"] not in symbols:
                    return 400, {"code": -1121, "msg": "Invalid symbol."}
                return 200, self.ticker(query["symbol"])
            return 200, [self.ticker(s) for s in symbols]
        if path == "/api/v3/depth" and query.get("symbol") in symbols:
            return 200, self.depth(query["symbol"], min(int(query.get("limit", 100)), 100))
        return 404, {"code": -1, "msg": f"not served by the synthetic exchange: {path}"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        exchange = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                status, body = exchange.answer(url.path, query)
                with exchange._lock:
                    exchange.requests.append(url.path)
                    if status == 404:
                        exchange.unknown.append(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_DELETE = do_PUT = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are recorded in exchange.requests

        return Handler
