"""Study presets: one module per thesis experiment, plus the search. ``PRESETS`` maps name -> Preset."""

from search_spaces import fig3, fig4, fig5, quick, search, table1, table2, table3
from search_spaces.base import Preset, validate_search

PRESETS: dict[str, Preset] = {
    module.PRESET.name: module.PRESET
    for module in (quick, table1, fig3, table2, fig5, table3, fig4, search)
}
DEFAULT_PRESET = "quick"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ValueError listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


__all__ = ["PRESETS", "DEFAULT_PRESET", "Preset", "get_preset", "validate_search"]
