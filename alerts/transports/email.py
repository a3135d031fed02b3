"""E-mail through Django's mail backend (EMAIL_* settings); the target is a comma-separated list."""

from __future__ import annotations

import smtplib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email

from alerts.transports.base import Transport, TransportError


def _addresses(target: str) -> list[str]:
    return [address.strip() for address in target.split(",") if address.strip()]


def _is_permanent(code: int) -> bool:
    # SMTP: 4xx asks the sender to try again later (greylisting, a full mailbox, a busy server),
    # 5xx is a refusal that will not change on its own.
    return 500 <= code < 600


class EmailTransport(Transport):
    @classmethod
    def validate_target(cls, target: str) -> str:
        addresses = _addresses(target)
        if not addresses:
            raise ValueError("enter at least one e-mail address")
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                raise ValueError(f"{address!r} is not an e-mail address") from None
        return ", ".join(addresses)

    def send(self, subject: str, body: str, html: str | None = None) -> None:
        if not settings.EMAIL_ENABLED:
            raise TransportError("e-mail is switched off (EMAIL_ENABLED=false)", permanent=True)
        recipients = _addresses(self.target)
        if not recipients:
            raise TransportError("the channel has no e-mail address", permanent=True)
        try:
            send_mail(
                subject=subject,
                message=body,
                from_email=None,  # DEFAULT_FROM_EMAIL
                recipient_list=recipients,
                html_message=html,
                fail_silently=False,
            )
        except smtplib.SMTPRecipientsRefused as exc:
            # Every recipient was refused; each has its own code.
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{address}: {code} {_text(message)}"
                for address, (code, message) in exc.recipients.items()
            )
            permanent = all(_is_permanent(code) for code in codes)
            raise TransportError(
                f"SMTP refused the recipients: {detail}", permanent=permanent
            ) from exc
        except smtplib.SMTPResponseException as exc:
            raise TransportError(
                f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}",
                permanent=_is_permanent(exc.smtp_code),
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnections, refused connections, timeouts, DNS: the server may be back soon.
            raise TransportError(f"SMTP: {type(exc).__name__}: {exc}") from exc


def _text(message: bytes | str) -> str:
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message)
