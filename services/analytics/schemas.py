from datetime import date

from pydantic import BaseModel


class DayCount(BaseModel):
    date: date
    count: int


class Overview(BaseModel):
    tickets_created: int
    by_day: list[DayCount]
