from django import template

from analysis import reports
from analysis.classes import CLASS_NAMES

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


@register.filter
def rate(figure) -> str:
    """A measured proportion as the pages show it: '8 of 10: 80.0% (95% interval 49.0–94.3%)'; 'none to
    count' without lesions (ml.serve.stats.proportion's dict, or None)."""
    if not figure or not figure.get("n"):
        return "none to count"
    low, high = figure["ci95"]
    counted = f"{figure['hits']} of {figure['n']}: " if "classes" not in figure else f"{figure['classes']} classes: "
    return f"{counted}{figure['value']:.1%} (95% interval {low * 100:.1f}–{high * 100:.1f}%)"


@register.filter
def class_name(code: str) -> str:
    """A class's name from its code (mel -> Melanoma)."""
    return CLASS_NAMES.get(code, code)
