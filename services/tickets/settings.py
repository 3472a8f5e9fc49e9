from pydantic import Field

from libs.common.settings import CommonSettings


class Settings(CommonSettings):
    service_name: str = "tickets"

    # SLA breach scheduler: how often every tenant is scanned, and how many breaches one
    # transaction marks (per kind) before committing and taking the next batch.
    sla_scan_interval_s: float = Field(default=15.0, gt=0)
    sla_scan_batch_size: int = Field(default=200, ge=1, le=5000)
