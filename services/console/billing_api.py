"""The console's billing endpoints. Thin: the billing service decides."""
from __future__ import annotations


class BillingApi:
    pass
