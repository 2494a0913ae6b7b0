"""Email channels: an SMTP listener, Mailgun inbound routes and SendGrid Inbound Parse, sharing one
MIME normalizer (`plugins.email.mime`)."""
