from django import template

from analysis import reports

register = template.Library()


@register.filter
def percent(value, digits: int = 1) -> str:
    """0.8734 -> '87.3%'; empty for a missing value."""
    if value is None or value == "":
        return ""
    return f"{float(value) * 100:.{int(digits)}f}%"


@register.filter
def tier_reason(analysis) -> str:
    """Why a result sits in its tier where its most likely class alone would tell another story; empty otherwise
    (analysis.reports.tier_reason, as the analysis page, the PDF and the API say it)."""
    return reports.tier_reason(analysis)
