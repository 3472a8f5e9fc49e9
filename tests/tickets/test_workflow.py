"""Status transitions: the built-in five, tenant statuses in their categories."""

import pytest

from services.tickets.workflow import CATEGORY_TRANSITIONS, Status, StatusCategory, Workflow

BUILTIN = [category.value for category in StatusCategory]


@pytest.mark.parametrize("current", BUILTIN)
@pytest.mark.parametrize("new", BUILTIN)
def test_builtin_transitions_follow_the_category_table(current, new):
    allowed = CATEGORY_TRANSITIONS[StatusCategory(current)]
    assert Workflow([]).can_move(current, new) == (StatusCategory(new) in allowed)


def test_closed_ticket_cannot_move_to_pending():
    assert not Workflow([]).can_move("closed", "pending")
    assert Workflow([]).allowed_next("closed") == ["open"]


def test_tenant_status_moves_like_its_category():
    waiting = Status("waiting_on_vendor", "Waiting on vendor", StatusCategory.pending, False, 1)
    workflow = Workflow([waiting])
    assert workflow.can_move("open", "waiting_on_vendor")
    assert workflow.can_move("pending", "waiting_on_vendor")  # same category
    assert workflow.can_move("waiting_on_vendor", "pending")
    assert workflow.can_move("waiting_on_vendor", "resolved")
    assert not workflow.can_move("closed", "waiting_on_vendor")
    assert "waiting_on_vendor" in workflow.allowed_next("in_progress")
    assert "waiting_on_vendor" not in workflow.allowed_next("waiting_on_vendor")


def test_allowed_next_lists_in_category_order():
    assert Workflow([]).allowed_next("open") == ["pending", "in_progress", "resolved", "closed"]
    assert Workflow([]).allowed_next("resolved") == ["open", "in_progress", "closed"]
