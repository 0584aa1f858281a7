"""Operators, panels and the preferences' drawing; nothing imports this package but the add-on's registration."""
