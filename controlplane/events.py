"""Domain events of the engines core: what happened, told to whoever listens above.

The core (models, commands, ingest, gateway, api) never imports risk, alerts or the dashboard;
they connect to these signals in their ``AppConfig.ready`` and react (risk evaluates its limits
after a batch, alerts schedule their rules, the dashboard pushes the new rows to browsers). Each
signal is sent after the commit of what it announces, through ``announce``: a receiver that fails
is logged and counted, and costs neither the other receivers nor the engine its ack.

Signals of the layers above live with them (``risk.events``, ``alerts.events``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

from controlplane import hub

log = logging.getLogger(__name__)


class DomainEvent(Signal):
    """A signal with a name: the name is what the logs and /metrics say when a receiver fails."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


# An engine's events frame was stored (``engine_id``; ``result``: the ingest's IngestResult, with
# the engine row as the batch left it; ``refused``: how many of its events the database refused
# alone) and is about to be acknowledged. Sent in the thread that stored it, before the ack, even
# when nothing new was stored: post-trade risk is evaluated on it, so a breach acts before the
# engine sends its next batch.
batch_stored = DomainEvent("batch_stored")

# What an operator sees of these engines changed (``engine_ids``): a batch, a state, a connection,
# a command issued. Sent from any thread or event loop; receivers must return at once.
engines_changed = DomainEvent("engines_changed")

# A batch of commands was issued (``batch_id``; ``kind``; ``engine_ids``: the engines it went to;
# ``params``: the command's parameters as stored; ``actor_id``, ``actor_label``: who or what issued
# it). Sent after the commit, in the thread that issued it, once the push to the engines is out:
# the journal opens an incident on a kill and links what is issued to an open one. ``last_seqs``:
# each engine's last stored event when the batch was written (what the engines had done by then).
commands_issued = DomainEvent("commands_issued")

# Engines' command results were stored (``answers``: (engine id, command id, result status) of
# each, in arrival order; ``engine_ids``: the engines, once each). Sent from the event loop of the
# engines' sockets; receivers must return at once.
command_answered = DomainEvent("command_answered")

# An engine said hello in a mode its stage does not allow (``engine_id``; ``stage``: its stage;
# ``mode``: the mode it said, live): refused, and held HALTED by a kill from the control plane
# (gateway.session.stage_violation). Sent after the commit; the alerts app raises a critical alert.
stage_violated = DomainEvent("stage_violated")

# An engine was asked what it said it cannot do (controlplane.capabilities: ``engine_id``;
# ``what``: a sentence naming the command or limit kind). Sent after the commit; the alerts app
# raises an alert.
capability_missing = DomainEvent("capability_missing")

# A broker statement of an engine was imported and reconciled against the ledger
# (``statement_id``, ``engine_id``; ``differences``: how many). Sent after the commit; the alerts
# app raises an alert when they differ (controlplane.statements).
statement_reconciled = DomainEvent("statement_reconciled")

# Asked, not announced: the pre-trade limits an engine gets in its welcome (``engine``: the
# Engine). The risk app answers ``(limits revision, [limit in wire form, ...])``.
limits_wanted = DomainEvent("limits_wanted")


def announce(signal: DomainEvent, **kwargs: Any) -> None:
    """Send ``signal`` to its receivers; one that fails is logged and counted, and the others
    are still called. Never raises: what it announces is already stored."""
    for receiver, answer in signal.send_robust(sender=None, **kwargs):
        if isinstance(answer, Exception):
            name = f"{receiver.__module__}.{receiver.__qualname__}"
            error = (type(answer), answer, answer.__traceback__)
            log.error("%s: receiver %s failed", signal.name, name, exc_info=error)
            _count_failure(signal.name, name)


def limits_for(engine: Any) -> tuple[int, list[dict[str, Any]]]:
    """The revision and the pre-trade limits ``engine`` must enforce, as the risk app answers.

    Not robust on purpose: if the limits cannot be read, the welcome fails and the engine
    connects again, rather than trading without the limits it should have.
    """
    answers = [answer for _, answer in limits_wanted.send(sender=None, engine=engine) if answer]
    if len(answers) > 1:
        raise RuntimeError(f"{len(answers)} receivers answer limits_wanted; one must")
    return answers[0] if answers else (0, [])


def failures_key() -> str:
    return hub.channel_name("receiver_failures")


def _count_failure(signal: str, receiver: str) -> None:
    # Counted where every process's failures add up, and read by /metrics at scrape time.
    try:
        hub.sync_client().hincrby(failures_key(), f"{signal} {receiver}", 1)
    except Exception as exc:  # Redis away: the log line above is the record
        log.warning("receiver failure not counted: %s", exc)


def receiver_failures() -> dict[tuple[str, str], int]:
    """(signal, receiver) -> how many times it failed, in every process since Redis started."""
    counts = hub.sync_client().hgetall(failures_key())
    pairs = ((key.decode().partition(" "), int(value)) for key, value in counts.items())
    return {(signal, receiver): value for (signal, _, receiver), value in pairs}
