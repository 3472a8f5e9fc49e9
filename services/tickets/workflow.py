"""Statuses and the transitions between them.

Five built-in statuses, one per category. A tenant adds its own statuses (Freshdesk's custom
statuses 6+, "waiting on vendor"), each belonging to one of the five categories; a status moves
like its category does. Moving between two statuses of the same category is always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class StatusCategory(StrEnum):
    open = "open"
    pending = "pending"
    in_progress = "in_progress"
    resolved = "resolved"
    closed = "closed"


# Which categories a ticket may move to from each category.
CATEGORY_TRANSITIONS: dict[StatusCategory, frozenset[StatusCategory]] = {
    StatusCategory.open: frozenset(
        {StatusCategory.pending, StatusCategory.in_progress, StatusCategory.resolved, StatusCategory.closed}
    ),
    StatusCategory.pending: frozenset(
        {StatusCategory.open, StatusCategory.in_progress, StatusCategory.resolved, StatusCategory.closed}
    ),
    StatusCategory.in_progress: frozenset(
        {StatusCategory.open, StatusCategory.pending, StatusCategory.resolved, StatusCategory.closed}
    ),
    # A resolved ticket is reopened (or worked again) or closed for good.
    StatusCategory.resolved: frozenset(
        {StatusCategory.open, StatusCategory.in_progress, StatusCategory.closed}
    ),
    # A closed ticket can only be reopened.
    StatusCategory.closed: frozenset({StatusCategory.open}),
}


@dataclass(frozen=True)
class Status:
    key: str
    name: str
    category: StatusCategory
    builtin: bool
    position: int = 0


BUILTIN_STATUSES = {
    category.value: Status(
        category.value, category.value.replace("_", " ").capitalize(), category, True, index
    )
    for index, category in enumerate(StatusCategory)
}


class Workflow:
    """One tenant's statuses: the built-in five plus its own."""

    def __init__(self, custom: list[Status]) -> None:
        self.statuses = dict(BUILTIN_STATUSES)
        for status in custom:
            builtin = BUILTIN_STATUSES.get(status.key)
            # A tenant's row for a built-in status only names it (its own word, e.g. in Korean).
            self.statuses[status.key] = replace(builtin, name=status.name) if builtin else status

    def get(self, key: str) -> Status | None:
        return self.statuses.get(key)

    def ordered(self) -> list[Status]:
        """Display order: by category, the built-in status first, then the tenant's by position."""
        categories = list(StatusCategory)
        return sorted(
            self.statuses.values(),
            key=lambda s: (categories.index(s.category), not s.builtin, s.position, s.key),
        )

    def allowed_next(self, current_key: str, current_category: StatusCategory | None = None) -> list[str]:
        """Statuses a ticket in `current_key` may move to, in display order. A status removed
        since the ticket took it (`current_category` given) moves like its category."""
        current = self.statuses.get(current_key)
        if current is None:
            if current_category is None:
                raise KeyError(current_key)
            current = Status(current_key, current_key, current_category, False)
        reachable = set(CATEGORY_TRANSITIONS[current.category])
        if current.category is not StatusCategory.closed:
            reachable.add(current.category)  # e.g. pending -> waiting_on_vendor
        return [s.key for s in self.ordered() if s.category in reachable and s.key != current_key]

    def can_move(
        self, current_key: str, new_key: str, current_category: StatusCategory | None = None
    ) -> bool:
        return new_key in self.allowed_next(current_key, current_category)
