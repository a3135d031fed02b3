"""One Apprise URL per channel: Slack, PagerDuty, Telegram, Teams, json:// webhooks and more.

Apprise reports a failed delivery as a false result and a log line, not an exception; it does not
say whether trying again could help, so every failure of a valid URL is treated as transient (the
delivery task gives up after its last attempt). A URL Apprise cannot parse is a permanent error.
"""

from __future__ import annotations

import apprise

from alerts.transports.base import Transport, TransportError


class AppriseTransport(Transport):
    @classmethod
    def validate_target(cls, target: str) -> str:
        target = target.strip()
        if not apprise.Apprise().add(target):
            raise ValueError("Apprise does not recognise this URL (see the Apprise wiki)")
        return target

    def send(self, subject: str, body: str, html: str | None = None) -> None:
        # The plain-text body reads well everywhere (chat, pager, JSON); html is for e-mail.
        notifier = apprise.Apprise()
        if not notifier.add(self.target):
            raise TransportError(
                "Apprise does not recognise this channel's URL: enter it again", permanent=True
            )
        result = notifier.notify(body=body, title=subject, body_format=apprise.NotifyFormat.TEXT)
        if result:
            return
        messages = [entry.message for entry in result.logs() if entry.level != "DEBUG"]
        detail = " ".join(messages)[-500:] or f"Apprise status {result.status.name}"
        raise TransportError(f"Apprise: {detail}")
