"""The engines domain: what each engine is, what it did, and what it was told to do."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, get_args

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from engine_sdk import protocol as p

MONEY = {"max_digits": 24, "decimal_places": 8}
QTY = {"max_digits": 24, "decimal_places": 8}
# A currency code (protocol: CurrencyCode): upper-case letters and digits, 2 to 16 of them.
CURRENCY_CODE_LENGTH = 16
currency_code = RegexValidator(
    p.CURRENCY_CODE_PATTERN,
    "A currency code is 2 to 16 upper-case letters and digits (EUR, USDT, 1INCH).",
)
TOKEN_PREFIX = "cpe_"


def wire_choices(name: str, vocabulary: Any, labels: dict[str, str] | None = None) -> Any:
    """Model choices whose values are one of the protocol's word lists (engine_sdk.protocol):
    what engines send is what is stored, spelt in one place. A member is its value in capitals
    (``Mode.PAPER == "paper"``), its label the value in words ("Paper", "Cancel all") unless
    ``labels`` names it otherwise."""
    words = labels or {}
    members = [
        (value.upper(), (value, words[value]) if value in words else value)
        for value in get_args(vocabulary)
    ]
    return models.TextChoices(name, members, module=__name__)


Mode = wire_choices("Mode", p.Mode)
# Said the same way on every page, message and audit line.
Stage = wire_choices(
    "Stage", p.Stage, {"small_capital": "Small capital", "full": "Full production"}
)
# The stages whose engines may send real orders (an engine in live mode).
REAL_MONEY_STAGES = (Stage.SMALL_CAPITAL, Stage.FULL)
# The modes an engine at each stage may run in, its own first (the mode a stage change gives an
# engine whose registered mode does not fit the new stage). One each, but live for both real-money
# stages: a promotion changes what the engine must say in its hello, and an engine trusted with
# real money runs live, as its record at that stage must be of real orders (docs/going-live.md).
MODES_OF_STAGE: dict[str, tuple[str, ...]] = {
    Stage.BACKTEST: (Mode.BACKTEST,),
    Stage.PAPER: (Mode.PAPER,),
    Stage.SHADOW: (Mode.SHADOW,),
    Stage.SMALL_CAPITAL: (Mode.LIVE,),
    Stage.FULL: (Mode.LIVE,),
}
# Where a new engine may start: anything above is reached through the gates.
CREATION_STAGES = (Stage.BACKTEST, Stage.PAPER)
TradingState = wire_choices("TradingState", p.TradingState)
Side = wire_choices("Side", p.Side)
OrderStatus = wire_choices("OrderStatus", p.OrderStatus)
# An order the engine may still fill.
WORKING_ORDER = (OrderStatus.NEW, OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)


def desired_state_at(desired: str, until: datetime | None, now: datetime) -> str:
    """A desired PAUSED with an end that has passed is ACTIVE: the pause is over everywhere the
    desired state is read (the welcome, the pages), whether or not the stored row says so yet."""
    if desired == TradingState.PAUSED and until is not None and until <= now:
        return TradingState.ACTIVE
    return desired


def hash_token(token: str) -> str:
    # Tokens are 256-bit random, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def new_engine_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Engine(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.PAPER)
    # The control plane's decision on how far the engine has come towards real money: the mode
    # it reports must fit it (docs/going-live.md).
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.PAPER)
    broker = models.CharField(max_length=64, blank=True)
    account = models.CharField(max_length=64, blank=True)
    strategy_tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    description = models.TextField(blank=True)

    # The state the control plane wants (latched: a kill stays until a person lifts it) beside
    # the state the engine last said it is in.
    desired_state = models.CharField(
        max_length=10, choices=TradingState.choices, default=TradingState.ACTIVE
    )
    # Until when a desired PAUSED lasts (None: until resumed), and when the desired state last
    # changed: an engine that reconnects in another state is sent the command again.
    desired_until = models.DateTimeField(null=True, blank=True)
    desired_changed_at = models.DateTimeField(null=True, blank=True)
    # The highest right among the commands that set or held the desired state (a permission's
    # codename, e.g. issue_kill for a flatten of everything; empty when a resume cleared it): a
    # resume needs it too, so an operator cannot undo what a risk manager's flatten did.
    desired_set_by_right = models.CharField(max_length=64, blank=True, default="")
    reported_state = models.CharField(max_length=10, choices=TradingState.choices, blank=True)
    # When the engine last said it was stopping on purpose (a final heartbeat with ``stopping``,
    # docs/protocol.md); its next hello clears it. A stopped engine is shown as stopped, not as
    # down, and raises no engine-down alert.
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Why the engine says it changed state (its last state event: "dead-man: no server for
    # 15 s"), for which state and when. Shown only while the engine still reports that state: a
    # heartbeat or hello may change reported_state without a reason.
    reported_reason = models.CharField(max_length=1024, blank=True)
    reported_reason_state = models.CharField(
        max_length=10, choices=TradingState.choices, blank=True
    )
    reported_reason_at = models.DateTimeField(null=True, blank=True)

    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_hint = models.CharField(max_length=12, blank=True, editable=False)

    connected = models.BooleanField(default=False)
    # Identifies the engine's current socket: a newer connection replaces an older one, and only
    # the current one may mark the engine disconnected.
    connection_id = models.UUIDField(null=True, blank=True, editable=False)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # The engine's clock minus the server's at its last heartbeat, in ms (the heartbeat's ts against
    # its arrival): the pre-flight's clock check (docs/going-live.md). Includes the transit time.
    clock_offset_ms = models.IntegerField(null=True, blank=True)
    # The capital the engine is meant to trade in full production, in its account currency, and
    # the share of it the capital ramp allows now (25, 50, 100 %): together its capital ceiling,
    # set at the real-money stages only (docs/going-live.md).
    target_capital = models.DecimalField(**MONEY, null=True, blank=True)
    capital_pct = models.PositiveSmallIntegerField(null=True, blank=True)
    # The currency of the engine's account (its last account event) and the latest FX rate it
    # reported for each other currency: units of the account currency per unit, as decimal
    # strings ({"EUR": "1.1"}). Exposures of instruments in those currencies are converted with
    # them (controlplane.trading_math.exposure).
    account_currency = models.CharField(max_length=16, blank=True, default="")
    fx_rates = models.JSONField(default=dict, blank=True)
    engine_build = models.CharField(max_length=128, blank=True)
    config_hash = models.CharField(max_length=128, blank=True)
    last_seq = models.BigIntegerField(default=0, help_text="Highest event seq durably stored.")
    limits_version = models.IntegerField(null=True, blank=True)
    # The run its last hello named: the orders and fills it reports are stored under it, their
    # ids unique per (engine, run) (docs/protocol.md, "Runs"). "" for an engine with one run.
    run_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    # What its last hello said it can enforce ({"commands": [...], "limit_kinds": [...]});
    # None: it said nothing, so everything, as engines did before capabilities existed.
    capabilities = models.JSONField(null=True, blank=True)

    # Running figures, kept by the gateway as events are stored.
    equity = models.DecimalField(**MONEY, null=True, blank=True)
    cash = models.DecimalField(**MONEY, null=True, blank=True)
    session_start_at = models.DateTimeField(null=True, blank=True)
    session_start_equity = models.DecimalField(**MONEY, null=True, blank=True)
    high_water_mark = models.DecimalField(**MONEY, null=True, blank=True)
    day_pnl = models.DecimalField(**MONEY, default=Decimal(0))
    drawdown_pct = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    # Counts kept by the gateway as it stores orders and fills, under the engine's row lock, so
    # that the fleet view and the risk limits read them instead of counting the day's orders
    # again each time (a count that grows all day). The day's counts are those of counts_day
    # (UTC): orders created that day, of them rejected, fills that day. A row whose counts_day
    # is not today has none today yet (Engine.day_counts).
    counts_day = models.DateField(null=True, blank=True, editable=False)
    orders_today = models.IntegerField(default=0, editable=False)
    rejected_today = models.IntegerField(default=0, editable=False)
    fills_today = models.IntegerField(default=0, editable=False)
    working_orders = models.IntegerField(default=0, editable=False)
    # Events the database would not store, refused one by one (docs/protocol.md, "Refused
    # events"); each is in the event log with its reason.
    refused_events = models.BigIntegerField(default=0, editable=False)

    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["mode", "is_active"]),
            models.Index(fields=["connected", "last_seen_at"]),
        ]
        permissions = [
            ("issue_pause", "Can pause and resume engines from a pause"),
            ("issue_reduce", "Can reduce positions and cancel orders"),
            ("issue_kill", "Can kill engines and flatten the fleet"),
            ("approve_resume", "Can approve a resume after a kill"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.stage in MODES_OF_STAGE and self.mode not in MODES_OF_STAGE[self.stage]:
            raise ValidationError({"mode": mode_refusal(self.stage, self.mode)})

    def desired_state_at(self, now: datetime) -> str:
        """The desired state as of ``now``: a timed pause whose time has passed is over, even
        before the sweep (commands.desired_state.timed_pauses_end) has written ACTIVE back."""
        return desired_state_at(self.desired_state, self.desired_until, now)

    @property
    def desired_state_now(self) -> str:
        return self.desired_state_at(datetime.now(UTC))

    @property
    def capital_ceiling(self) -> Decimal | None:
        """The most the engine may hold, gross: its ramp's share of its target capital, at the
        real-money stages; None when no ceiling applies (or none can be computed)."""
        if self.stage not in REAL_MONEY_STAGES or self.target_capital is None:
            return None
        if self.capital_pct is None:
            return None
        return (self.target_capital * self.capital_pct / 100).quantize(Decimal("0.01"))

    @property
    def stopped(self) -> bool:
        """Disconnected after saying it was stopping: shut down on purpose, not lost."""
        return not self.connected and self.stopped_at is not None

    def set_token(self, token: str) -> None:
        self.token_hash = hash_token(token)
        self.token_hint = token[: len(TOKEN_PREFIX) + 4]

    def day_counts(self, now: datetime | None = None) -> tuple[int, int, int]:
        """Orders created today (UTC), of them rejected, and fills today."""
        today = (now or datetime.now(UTC)).astimezone(UTC).date()
        if self.counts_day != today:
            return 0, 0, 0
        return self.orders_today, self.rejected_today, self.fills_today


def mode_refusal(stage: str, mode: str) -> str:
    allowed = " or ".join(MODES_OF_STAGE[stage])
    return f"an engine at stage {stage} runs in {allowed} mode, not {mode}"


class StageChange(models.Model):
    """One move of an engine's stage, its first one (from "") included: the stage's history."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="stage_changes")
    from_stage = models.CharField(max_length=16, choices=Stage.choices, blank=True)
    to_stage = models.CharField(max_length=16, choices=Stage.choices)
    at = models.DateTimeField(auto_now_add=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_label = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    # A risk manager moved the engine although a gate was not passed (shown apart, in red).
    override = models.BooleanField(default=False)
    # The share of its target capital the engine may use from this change on (None: no ceiling).
    # A step of the capital ramp is a row whose from_stage and to_stage are the same.
    capital_pct = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["engine", "-at"], name="stage_change_engine_idx")]

    def __str__(self) -> str:
        return f"{self.engine_id}: {self.from_stage or '(new)'} -> {self.to_stage}"


class Instrument(models.Model):
    class AssetClass(models.TextChoices):
        EQUITY = "equity"
        FUTURE = "future"
        OPTION = "option"
        FX = "fx"
        CRYPTO = "crypto"
        BOND = "bond"
        OTHER = "other"

    symbol = models.CharField(max_length=p.MAX_SYMBOL_LENGTH, unique=True)
    sector = models.CharField(max_length=64, blank=True, db_index=True)
    asset_class = models.CharField(
        max_length=10, choices=AssetClass.choices, default=AssetClass.EQUITY
    )
    multiplier = models.DecimalField(max_digits=18, decimal_places=6, default=Decimal(1))
    # A currency code as the protocol has it (EUR, USDT): a person's edit in the admin is held to
    # it too, so that the engines' FX rates, keyed by such codes, find it.
    currency = models.CharField(
        max_length=CURRENCY_CODE_LENGTH, default="USD", validators=[currency_code]
    )
    # The price's smallest step, when an engine declared it or a person entered it.
    tick_size = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    # Who described the instrument: "" for the bare row an engine's first order of the symbol
    # created (its fields are defaults), else "engine <name>" or "user <username>". An engine's
    # declaration fills in a bare row; it may not contradict a described one (docs/protocol.md,
    # "Instruments and FX rates").
    described_by = models.CharField(max_length=160, blank=True, default="")

    class Meta:
        ordering = ["symbol"]
        constraints = [
            models.CheckConstraint(condition=Q(multiplier__gt=0), name="instrument_multiplier_gt_0")
        ]

    def __str__(self) -> str:
        return self.symbol


class Order(models.Model):
    Status = OrderStatus
    WORKING = WORKING_ORDER

    OrderType = wire_choices("OrderType", p.OrderType)

    # No index of its own: order_unique_id and order_engine_recent_idx both start with it, and
    # every index is one more write for each order the engines report. No foreign key in the
    # database for engine and instrument (migration 0008): the ingest checks them set-based.
    engine = models.ForeignKey(
        Engine, on_delete=models.CASCADE, related_name="orders", db_index=False, db_constraint=False
    )
    # The engine's run the order belongs to (Engine.run_id): its id is unique within it.
    run_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    client_order_id = models.CharField(max_length=64)
    # Which of the engine's strategies placed it ("" for an engine's only one).
    strategy_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    broker_order_id = models.CharField(max_length=64, blank=True)
    # No index: only deleting an instrument reads orders by it (Django's PROTECT check, which
    # then scans), and every index is one more write for each order reported.
    instrument = models.ForeignKey(
        Instrument,
        on_delete=models.PROTECT,
        related_name="orders",
        db_index=False,
        db_constraint=False,
    )
    side = models.CharField(max_length=4, choices=Side.choices)
    order_type = models.CharField(max_length=10, choices=OrderType.choices)
    quantity = models.DecimalField(**QTY)
    limit_price = models.DecimalField(**MONEY, null=True, blank=True)
    stop_price = models.DecimalField(**MONEY, null=True, blank=True)
    expected_price = models.DecimalField(**MONEY, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    filled_quantity = models.DecimalField(**QTY, default=Decimal(0))
    avg_fill_price = models.DecimalField(**MONEY, null=True, blank=True)
    reject_reason = models.CharField(max_length=512, blank=True)
    created_at = models.DateTimeField(help_text="Engine time of the first report.")
    updated_at = models.DateTimeField(help_text="Engine time of the latest report.")
    last_seq = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["engine", "run_id", "client_order_id"], name="order_unique_id"
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="order_quantity_gt_0"),
            models.CheckConstraint(
                condition=Q(filled_quantity__gte=0), name="order_filled_quantity_gte_0"
            ),
        ]
        indexes = [
            # Working orders of an engine, newest first: the engine page and the fleet counts.
            models.Index(
                fields=["engine", "-updated_at"],
                name="order_working_idx",
                condition=Q(status__in=WORKING_ORDER),
            ),
            # It holds what golive counts of a period's orders: read from the index alone.
            models.Index(
                fields=["engine", "-created_at"],
                name="order_engine_recent_idx",
                include=["status", "filled_quantity"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.client_order_id} {self.side} {self.quantity} {self.instrument_id}"


class Fill(models.Model):
    # No foreign keys in the database (migration 0005): the ingest checks them set-based, once a
    # batch, and deletes go through Django's collector, which applies on_delete itself. No index
    # of its own for engine either: fill_unique_id and fill_engine_recent_idx both start with it.
    engine = models.ForeignKey(
        Engine, on_delete=models.CASCADE, related_name="fills", db_index=False, db_constraint=False
    )
    run_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    fill_id = models.CharField(max_length=64)
    strategy_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    # Neither has an index: nothing reads fills by order or by instrument but Django's checks
    # when one is deleted (rare, and they then scan), where each index cost every fill stored
    # about 1.1 us of the database's time, a fifth of what storing a fill costs it.
    # RESTRICT, not PROTECT: an order with fills cannot be deleted on its own, but deleting
    # the engine deletes both (PROTECT refused to delete any engine that had a fill).
    order = models.ForeignKey(
        Order, on_delete=models.RESTRICT, related_name="fills", db_index=False, db_constraint=False
    )
    instrument = models.ForeignKey(
        Instrument,
        on_delete=models.PROTECT,
        related_name="fills",
        db_index=False,
        db_constraint=False,
    )
    side = models.CharField(max_length=4, choices=Side.choices)
    quantity = models.DecimalField(**QTY)
    price = models.DecimalField(**MONEY)
    fee = models.DecimalField(**MONEY, default=Decimal(0))
    # The fee's currency when the engine named it (EUR, BNB), "" when it did not (the fee is then
    # in the account's currency). Kept as reported; the ledger converts the fee.
    fee_currency = models.CharField(
        max_length=CURRENCY_CODE_LENGTH, blank=True, default="", db_default=""
    )
    expected_price = models.DecimalField(**MONEY, null=True, blank=True)
    # A simulated fill's price a real order would have got (protocol: fill.market_price).
    market_price = models.DecimalField(**MONEY, null=True, blank=True)
    liquidity = models.CharField(max_length=5, blank=True)
    ts = models.DateTimeField()
    seq = models.BigIntegerField()

    class Meta:
        constraints = [
            # A fill counted twice is money counted twice: the database refuses it.
            models.UniqueConstraint(fields=["engine", "run_id", "fill_id"], name="fill_unique_id"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="fill_quantity_gt_0"),
            models.CheckConstraint(condition=Q(price__gt=0), name="fill_price_gt_0"),
        ]
        indexes = [
            # Each holds what golive reads of an engine's fills, so that it reads no table page
            # (an engine's fills are spread over as many pages as there are fills): the period's
            # slippage and counts from the first, the round trips from the second, in the
            # order they are counted in (golive.gates).
            models.Index(
                fields=["engine", "-ts"],
                name="fill_engine_recent_idx",
                include=["side", "price", "expected_price", "market_price"],
            ),
            models.Index(
                fields=["engine", "instrument", "ts", "seq"],
                name="fill_trip_idx",
                include=["side", "quantity", "price", "fee"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.fill_id} {self.side} {self.quantity}@{self.price}"


class Position(models.Model):
    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="positions")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="positions")
    # From our own fill ledger.
    quantity = models.DecimalField(**QTY, default=Decimal(0))
    avg_price = models.DecimalField(**MONEY, default=Decimal(0))
    realized_pnl = models.DecimalField(**MONEY, default=Decimal(0))
    last_price = models.DecimalField(**MONEY, null=True, blank=True)
    # As the engine / broker reported it: the broker is the truth when they differ.
    reported_quantity = models.DecimalField(**QTY, null=True, blank=True)
    reported_avg_price = models.DecimalField(**MONEY, null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    mismatch_since = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["engine", "instrument"], name="position_unique")
        ]
        indexes = [
            models.Index(fields=["engine"], name="position_open_idx", condition=~Q(quantity=0)),
            models.Index(
                fields=["mismatch_since"],
                name="position_mismatch_idx",
                condition=Q(mismatch_since__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.engine_id}:{self.instrument_id} {self.quantity}"


class AccountSnapshot(models.Model):
    """An engine's account (equity, cash) at a moment. Partitioned by UTC day of ts in the database
    (migration 0029, controlplane.partitions): its primary key there is (id, ts); days past
    ACCOUNT_SNAPSHOT_RETENTION_DAYS are archived, then dropped (controlplane.retention)."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="snapshots")
    ts = models.DateTimeField()
    equity = models.DecimalField(**MONEY)
    cash = models.DecimalField(**MONEY)
    margin_used = models.DecimalField(**MONEY, default=Decimal(0))
    # The account event's currency: free text up to 16 characters (protocol: account.currency).
    currency = models.CharField(max_length=16, default="USD")
    seq = models.BigIntegerField()

    class Meta:
        # With seq and the equity: a day's close is one probe of the index alone.
        indexes = [
            models.Index(
                fields=["engine", "ts", "seq"], name="snapshot_engine_ts_idx", include=["equity"]
            )
        ]
        constraints = [
            # With ts: a partitioned table's unique keys hold its partition key (migration 0029).
            models.UniqueConstraint(fields=["engine", "seq", "ts"], name="snapshot_unique_seq")
        ]

    def __str__(self) -> str:
        return f"{self.engine_id} {self.ts:%Y-%m-%d %H:%M:%S} equity {self.equity}"


class MetricSample(models.Model):
    """One value of a metric an engine reports. Partitioned by UTC day of ts in the database
    (migration 0029, controlplane.partitions): its primary key there is (id, ts); days past
    METRIC_RETENTION_DAYS are archived, then dropped (controlplane.retention)."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="metrics")
    ts = models.DateTimeField()
    name = models.CharField(max_length=64)
    value = models.FloatField()
    seq = models.BigIntegerField()

    class Meta:
        indexes = [
            models.Index(
                fields=["engine", "name", "ts"], name="metric_engine_name_ts_idx", include=["value"]
            )
        ]
        # With ts: a partitioned table's unique keys hold its partition key (migration 0029).
        constraints = [
            models.UniqueConstraint(fields=["engine", "seq", "ts"], name="metric_unique_seq")
        ]

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class EngineLog(models.Model):
    """A log line an engine sent. Partitioned by UTC day of ts in the database (migration 0029,
    controlplane.partitions): its primary key there is (id, ts); days past
    ENGINE_LOG_RETENTION_DAYS are archived, then dropped (controlplane.retention)."""

    Level = wire_choices("Level", p.LogLevel)

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="logs")
    ts = models.DateTimeField()
    level = models.CharField(max_length=10, choices=Level.choices)
    message = models.TextField()
    context = models.JSONField(default=dict, blank=True)
    seq = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["engine", "-ts"], name="log_engine_recent_idx"),
            models.Index(
                fields=["engine", "-ts"],
                name="log_engine_errors_idx",
                condition=Q(level__in=["error", "critical"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                # With ts: a partitioned table's unique keys hold its partition key (0029).
                fields=["engine", "seq", "ts"],
                name="log_unique_seq",
                condition=Q(seq__isnull=False),
            )
        ]

    def __str__(self) -> str:
        return f"{self.level}: {self.message[:80]}"


CommandKind = wire_choices("CommandKind", p.CommandKind)


class CommandBatch(models.Model):
    """One operator action aimed at several engines ("kill all live"), tracked together."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=12, choices=CommandKind.choices)
    selector = models.CharField(max_length=128, help_text="all, live, tag:<tag>, engine:<name>")
    reason = models.TextField()
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    issued_by_label = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "command batches"
        indexes = [
            # The latest fleet-wide kill, looked up for the banner on every page.
            models.Index(
                fields=["-created_at"],
                name="batch_fleet_kill_idx",
                condition=Q(kind="kill", selector="all"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.selector}"


class Command(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        ACKNOWLEDGED = "acknowledged"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial"
        FAILED = "failed"
        EXPIRED = "expired"
        SUPERSEDED = "superseded"

    class Event(models.TextChoices):
        """What can happen to a command. Each moves it as TRANSITIONS says, or leaves it be."""

        DELIVER = "deliver"  # its frame reached the engine's socket
        ACKNOWLEDGE = "acknowledge"  # the engine's command_ack
        SUCCEED = "succeed"  # a command_result "succeeded"
        SUCCEED_PARTLY = "succeed_partly"  # a command_result "partial"
        FAIL = "fail"  # a command_result "failed"
        EXPIRE = "expire"  # its expiry passed before the engine acknowledged it
        SUPERSEDE = "supersede"  # a newer command made it obsolete before it was delivered
        # The engine's welcome carries what it says (the current limits) before the engine
        # acknowledged it: on a reconnection, a set_limits delivered to the old socket too.
        REPLACE = "replace"

    # The lifecycle, whole: (status, event) -> status. A pair not in it changes nothing (a late or
    # repeated answer never moves a command backwards). Every write of a command's status names
    # its event, and its SQL conditions are built from this (controlplane.commands.lifecycle).
    TRANSITIONS: ClassVar[dict[tuple[str, str], str]] = {
        (Status.PENDING, Event.DELIVER): Status.DELIVERED,
        (Status.PENDING, Event.ACKNOWLEDGE): Status.ACKNOWLEDGED,
        (Status.DELIVERED, Event.ACKNOWLEDGE): Status.ACKNOWLEDGED,
        (Status.PENDING, Event.SUCCEED): Status.SUCCEEDED,
        (Status.DELIVERED, Event.SUCCEED): Status.SUCCEEDED,
        (Status.ACKNOWLEDGED, Event.SUCCEED): Status.SUCCEEDED,
        (Status.PENDING, Event.SUCCEED_PARTLY): Status.PARTIAL,
        (Status.DELIVERED, Event.SUCCEED_PARTLY): Status.PARTIAL,
        (Status.ACKNOWLEDGED, Event.SUCCEED_PARTLY): Status.PARTIAL,
        (Status.PENDING, Event.FAIL): Status.FAILED,
        (Status.DELIVERED, Event.FAIL): Status.FAILED,
        (Status.ACKNOWLEDGED, Event.FAIL): Status.FAILED,
        # An acknowledged command is the engine's to finish: it reports an expired one as failed.
        (Status.PENDING, Event.EXPIRE): Status.EXPIRED,
        (Status.DELIVERED, Event.EXPIRE): Status.EXPIRED,
        (Status.PENDING, Event.SUPERSEDE): Status.SUPERSEDED,
        (Status.PENDING, Event.REPLACE): Status.SUPERSEDED,
        (Status.DELIVERED, Event.REPLACE): Status.SUPERSEDED,
    }

    # The statuses some event still moves out of: a command in one has no result yet.
    OPEN = (Status.PENDING, Status.DELIVERED, Status.ACKNOWLEDGED)

    # A command_result's status (engine_sdk.protocol.CommandResultStatus) is one of these events.
    RESULT_EVENTS: ClassVar[dict[str, str]] = {
        "succeeded": Event.SUCCEED,
        "partial": Event.SUCCEED_PARTLY,
        "failed": Event.FAIL,
    }

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: command_engine_recent_idx and command_open_idx both start with it, and
    # a fleet kill writes a hundred commands while every engine waits. (The database has no
    # foreign keys for engine, batch and issued_by either: migration 0010.)
    engine = models.ForeignKey(
        Engine,
        on_delete=models.CASCADE,
        related_name="commands",
        db_index=False,
        db_constraint=False,
    )
    batch = models.ForeignKey(
        CommandBatch,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="commands",
        db_constraint=False,
    )
    kind = models.CharField(max_length=12, choices=CommandKind.choices)
    params = models.JSONField(default=dict, blank=True)
    reason = models.TextField()
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_constraint=False,
    )
    # "alice", or "limit:12 max_daily_loss" when a risk limit issued it.
    issued_by_label = models.CharField(max_length=150)
    status = models.CharField(max_length=14, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    delivery_attempts = models.PositiveIntegerField(default=0)
    # Whether the engine had an open connection when the command was issued: the latency of a
    # command that waited for its engine to come back says nothing of the delivery path, and
    # /metrics keeps the two apart. Null for commands issued before it was recorded.
    engine_connected = models.BooleanField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)
    detail = models.TextField(blank=True)
    # The trading state the engine said it was in once the command was handled.
    state_after = models.CharField(max_length=10, choices=TradingState.choices, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(kind="kill") | Q(expires_at__isnull=True),
                name="command_kill_never_expires",
            )
        ]
        indexes = [
            # Undelivered / unacknowledged commands of an engine: checked on every heartbeat.
            models.Index(
                fields=["engine", "created_at"],
                name="command_open_idx",
                condition=Q(status__in=["pending", "delivered"]),
            ),
            models.Index(fields=["engine", "-created_at"], name="command_engine_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} -> {self.engine_id} ({self.status})"

    @classmethod
    def sources(cls, event: str) -> list[str]:
        """The statuses ``event`` moves a command out of, in the order of Status."""
        return [status for status in cls.Status if (status, event) in cls.TRANSITIONS]

    @classmethod
    def moved(cls, status: str, event: str) -> str | None:
        """The status ``event`` moves a command in ``status`` to; None when it does not move it."""
        return cls.TRANSITIONS.get((status, event))

    @property
    def shortfall(self) -> str:
        """What a partial or failed command left undone, in the words the UI shows."""
        if self.status not in (Command.Status.PARTIAL, Command.Status.FAILED):
            return ""
        result = self.result if isinstance(self.result, dict) else {}
        parts = []
        working = result.get("working")
        if isinstance(working, list) and working:
            parts.append(f"{len(working)} order{'s' if len(working) != 1 else ''} still working")
        left = result.get("left")
        if isinstance(left, dict) and left:
            parts.append(f"{len(left)} position{'s' if len(left) != 1 else ''} still open")
        if not parts:
            return self.detail or str(self.status)
        return f"{self.kind} incomplete: " + ", ".join(parts)


class AuditEvent(models.Model):
    """Append-only: a trigger in PostgreSQL refuses UPDATE and DELETE on this table."""

    ts = models.DateTimeField(auto_now_add=True, db_index=True)
    # No foreign key: deleting a user must not rewrite (or be blocked by) the audit trail.
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, help_text="Username, or the system part that acted.")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    reason = models.TextField(blank=True)
    outcome = models.CharField(max_length=32, default="ok")
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-ts"]
        indexes = [
            models.Index(fields=["target_type", "target_id", "-ts"], name="audit_target_idx"),
            models.Index(fields=["actor", "-ts"], name="audit_actor_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_label}"


class _StoredJSONField(models.JSONField):
    """The event log's column is ``json``, which psycopg already parses: take its value as is."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if isinstance(value, dict | list):
            return value
        return super().from_db_value(value, expression, connection)


class EngineEvent(models.Model):
    """The raw event log, one row per event, read-only.

    A view (migration 0009) over ``controlplane_eventframe``, where the gateway appends each
    stored batch as one row: its fresh events as one JSON array. That table is partitioned by
    day of ``received_at`` (controlplane.partitions), so retention drops whole days. Django
    manages neither.
    """

    pk = models.CompositePrimaryKey("engine", "seq")
    engine = models.ForeignKey(
        Engine, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=16)
    ts = models.DateTimeField()
    received_at = models.DateTimeField()
    payload = _StoredJSONField()

    class Meta:
        managed = False
        db_table = "controlplane_engineevent"
        ordering = ["engine", "seq"]

    def __str__(self) -> str:
        return f"{self.engine_id}#{self.seq} {self.kind}"


class ResumeRequest(models.Model):
    """A resume of a killed (HALTED) engine: one person asks, a second one approves (four-eyes)."""

    class Status(models.TextChoices):
        OPEN = "open"
        APPROVED = "approved"
        REJECTED = "rejected"
        WITHDRAWN = "withdrawn"

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="resume_requests")
    reason = models.TextField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_by_label = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    command = models.OneToOneField(
        Command, null=True, blank=True, on_delete=models.SET_NULL, related_name="resume_request"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one open request per engine: a second ask joins the first.
            models.UniqueConstraint(
                fields=["engine"], condition=Q(status="open"), name="resume_request_one_open"
            ),
            # Four-eyes, enforced by the database too: the approver is never the requester.
            models.CheckConstraint(
                condition=~Q(status="approved") | ~Q(decided_by=models.F("requested_by")),
                name="resume_request_four_eyes",
            ),
        ]

    def __str__(self) -> str:
        return f"resume {self.engine} ({self.status})"


class ApiToken(models.Model):
    """A personal token for scripts calling /api/v1/ as the user who owns it."""

    PREFIX = "cpu_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=64)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_hint = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user", "name"]
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="api_token_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_hint}…)"

    @classmethod
    def new_token(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)

    def set_token(self, token: str) -> None:
        self.token_hash = hash_token(token)
        self.token_hint = token[: len(self.PREFIX) + 4]


class BrokerStatement(models.Model):
    """One day of an engine's account as its broker states it (trades and end-of-day positions),
    reconciled against the fill ledger when imported (controlplane.statements)."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="statements")
    statement_date = models.DateField()
    filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64)
    trades = models.PositiveIntegerField(default=0)
    positions = models.PositiveIntegerField(default=0)
    differences_count = models.PositiveIntegerField(default=0)
    # The day's fees and realised cash flow as each side has them: P&L verified when they agree.
    ledger_summary = models.JSONField(default=dict)
    broker_summary = models.JSONField(default=dict)
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    imported_by_label = models.CharField(max_length=150)
    imported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-statement_date", "-imported_at", "-pk"]
        permissions = [("import_statement", "Can import a broker statement")]
        indexes = [
            models.Index(fields=["engine", "-statement_date"], name="statement_engine_date_idx")
        ]

    def __str__(self) -> str:
        return f"{self.engine} {self.statement_date} ({self.differences_count} differences)"

    @property
    def matched(self) -> bool:
        return self.differences_count == 0


class StatementDifference(models.Model):
    """One way the broker's statement and the ledger disagree."""

    class Kind(models.TextChoices):
        MISSING_IN_LEDGER = "missing_in_ledger", "Trade missing in the ledger"
        MISSING_AT_BROKER = "missing_at_broker", "Fill missing from the statement"
        SIDE = "side", "Side differs"
        QUANTITY = "quantity", "Quantity differs"
        PRICE = "price", "Price differs"
        FEE = "fee", "Fee differs"
        POSITION = "position", "End-of-day position differs"

    statement = models.ForeignKey(
        BrokerStatement, on_delete=models.CASCADE, related_name="differences"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # The statement's line (None for what only the ledger has).
    line = models.PositiveIntegerField(null=True, blank=True)
    symbol = models.CharField(max_length=p.MAX_SYMBOL_LENGTH, blank=True)
    trade_id = models.CharField(max_length=64, blank=True)
    ledger_value = models.CharField(max_length=64, blank=True)
    broker_value = models.CharField(max_length=64, blank=True)
    detail = models.CharField(max_length=300)

    class Meta:
        ordering = ["statement", "line", "pk"]

    def __str__(self) -> str:
        return self.detail
