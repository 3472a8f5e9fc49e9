"""Demo tenant: three users and about fifty tickets in Korean and English, created through the API."""

from __future__ import annotations

import random

import httpx

DEMO_TENANT = "demo"
DEMO_USERS = {
    "admin": "admin@demo.test",
    "agent": "agent@demo.test",
    "requester": "requester@demo.test",
}
# The agent `helpdesk bench tickets-api` logs in as: benchmark tickets (thousands per run) go to a
# tenant of their own, so the demo tenant stays as seeded.
BENCH_TENANT = "bench"
BENCH_AGENT = "agent@bench.test"

_SUBJECTS = [
    (
        "3층 엘리베이터가 멈췄습니다",
        "엘리베이터가 3층과 4층 사이에서 멈췄어요. 안에 사람은 없습니다.",
        "maintenance",
        "urgent",
    ),
    ("화장실 천장 누수", "2층 남자 화장실 천장에서 물이 샙니다.", "maintenance", "high"),
    ("회의실 에어컨 고장", "대회의실 에어컨이 작동하지 않습니다.", "maintenance", "medium"),
    ("주차장 조명 교체 요청", "지하 2층 주차장 조명 몇 개가 꺼져 있습니다.", "maintenance", "low"),
    ("비밀번호 재설정이 안 돼요", "비밀번호 재설정 메일이 오지 않습니다.", "account", "high"),
    ("청구서 금액이 이상합니다", "이번 달 청구서에 같은 항목이 두 번 청구되었습니다.", "billing", "medium"),
    ("로비 출입문 카드키 오류", "로비 출입문이 카드키를 인식하지 못합니다.", "maintenance", "high"),
    (
        "Elevator stuck on floor 3",
        "The east elevator has been stuck on floor 3 since 9am.",
        "maintenance",
        "urgent",
    ),
    (
        "Water leak in server room",
        "Water is dripping from the ceiling above rack B.",
        "maintenance",
        "urgent",
    ),
    (
        "Cannot log in to the portal",
        "I get 'invalid credentials' although my password is right.",
        "account",
        "high",
    ),
    (
        "Invoice shows the wrong VAT",
        "Our invoice for October lists 20% VAT instead of 10%.",
        "billing",
        "medium",
    ),
    ("Heating not working in room 204", "Room 204 is at 15°C this morning.", "maintenance", "high"),
    (
        "Request: export of all tickets",
        "Could we get a CSV export of last year's tickets?",
        "question",
        "low",
    ),
    ("Broken window on 5th floor", "A window in the 5th floor kitchen has a crack.", "maintenance", "medium"),
    ("How do I add a colleague?", "I want to invite a colleague to our account.", "question", "low"),
]


# Where maintenance tickets happen: (building, floor, room) picked per ticket.
_PLACES = [
    ("본관", "3", None),
    ("본관", "2", "201"),
    ("별관", "B2", None),
    ("Tower A", "5", "504"),
    ("Tower A", "1", None),
]
# What an agent does with some of them: (status, public reply).
_FOLLOW_UPS = [
    ("in_progress", "기사님이 확인 중입니다. / A technician is on the way."),
    ("pending", "Could you send a photo of the problem?"),
    ("resolved", "수리가 완료되었습니다. / Fixed, please let us know if it happens again."),
    (None, None),
    (None, None),
]


def seed_demo_tickets(gateway_url: str, passwords: dict[str, str], count: int = 50) -> int:
    """Create `count` demo tickets through the gateway as the demo requester and agent."""
    rng = random.Random(7)
    created = 0
    with httpx.Client(base_url=gateway_url, timeout=30.0) as client:
        tokens = {}
        for role in ("requester", "agent"):
            response = client.post(
                "/api/v1/auth/token", data={"username": DEMO_USERS[role], "password": passwords[role]}
            )
            response.raise_for_status()
            tokens[role] = response.json()["access_token"]
        agent_id = client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['agent']}"}
        ).json()["user_id"]
        for n in range(count):
            subject, description, category, priority = _SUBJECTS[n % len(_SUBJECTS)]
            role = "requester" if rng.random() < 0.6 else "agent"
            body = {
                "subject": subject,
                "description": description,
                "category": category,
                "priority": priority,
            }
            if category == "maintenance":
                body["building"], body["floor"], body["room"] = rng.choice(_PLACES)
                body["tags"] = ["facilities"]
            if role == "agent":
                body["source"] = rng.choice(["phone", "email", "chat"])
            response = client.post(
                "/api/v1/tickets",
                json=body,
                headers={"Authorization": f"Bearer {tokens[role]}", "Idempotency-Key": f"demo-seed-{n}"},
            )
            response.raise_for_status()
            created += 1
            _follow_up(client, tokens["agent"], agent_id, response.json(), *rng.choice(_FOLLOW_UPS))
    return created


def _follow_up(
    client: httpx.Client, token: str, agent_id: str, ticket: dict, status: str | None, reply: str | None
) -> None:
    """An agent works the ticket a little, so the demo shows replies, statuses and history."""
    headers = {"Authorization": f"Bearer {token}"}
    if reply:
        client.post(f"/api/v1/tickets/{ticket['id']}/comments", json={"body": reply}, headers=headers)
    if status:
        current = client.get(f"/api/v1/tickets/{ticket['id']}", headers=headers)
        client.patch(
            f"/api/v1/tickets/{ticket['id']}",
            json={"status": status, "assignee_id": agent_id},
            headers={**headers, "If-Match": current.headers["etag"]},
        ).raise_for_status()
