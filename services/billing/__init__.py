"""Billing: accounts per unit, fee items and rates, runs, invoices, payments, ledger, late fees, arrears."""
