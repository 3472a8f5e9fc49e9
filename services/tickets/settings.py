from typing import Literal

from pydantic import Field, SecretStr, model_validator

from libs.common.settings import CommonSettings

# What a support desk receives: photos, scans, office documents, logs and archives. No HTML,
# SVG or scripts: served from our origin they could run in the viewer's browser.
DEFAULT_ATTACHMENT_TYPES = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/heic",
    "application/pdf",
    "text/plain",
    "text/csv",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    # Hangul (HWP/HWPX) documents, the office format of many Korean organisations.
    "application/x-hwp",
    "application/vnd.hancom.hwp",
    "application/vnd.hancom.hwpx",
    "application/zip",
    "application/x-zip-compressed",
]


class Settings(CommonSettings):
    service_name: str = "tickets"

    # SLA scheduler: how often it runs, and how many breaches (per kind) or retargeted tickets
    # one transaction handles before committing and taking the next batch.
    sla_scan_interval_s: float = Field(default=15.0, gt=0)
    sla_scan_batch_size: int = Field(default=200, ge=1, le=5000)
    # Open tickets one SLA change moves inside the admin's request (`apply_to_open_tickets`; each
    # locked, updated, with history and an event); more are moved by the scheduler in batches.
    sla_retarget_max_tickets: int = Field(default=2000, ge=1)

    # Attachments: size limit per file and the media types accepted (exact, lowercase).
    attachments_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    attachments_allowed_types: list[str] = Field(default_factory=lambda: list(DEFAULT_ATTACHMENT_TYPES))

    # Where attachment bytes live: a local directory (one machine) or an S3-compatible bucket.
    blob_store: Literal["local", "s3"] = "local"
    blob_local_dir: str = ".helpdesk/blobs"
    # Blobs without an attachment row (a process died between storing a file and committing its
    # row) are deleted once older than the grace period; one process at a time sweeps this often.
    blob_sweep_interval_s: float = Field(default=3600.0, gt=0)
    blob_orphan_grace_s: float = Field(default=86400.0, ge=3600)
    # None means AWS (https://s3.<region>.amazonaws.com); set it for MinIO, Ceph and others.
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_session_token: SecretStr | None = None
    # Key prefix inside the bucket, e.g. "helpdesk/attachments/".
    s3_prefix: str = ""
    # Path-style URLs (endpoint/bucket/key) work with MinIO, Ceph and AWS; False uses bucket.host.
    s3_path_style: bool = True
    # Multipart upload part size (S3's minimum is 5 MiB for every part but the last).
    s3_part_size_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _blob_store_is_complete(self) -> "Settings":
        # Fail at start-up, not on the first upload.
        if self.blob_store == "s3":
            if not self.s3_bucket:
                raise ValueError("HELPDESK_BLOB_STORE=s3 needs HELPDESK_S3_BUCKET")
            if not self.s3_access_key_id or self.s3_secret_access_key is None:
                raise ValueError(
                    "HELPDESK_BLOB_STORE=s3 needs HELPDESK_S3_ACCESS_KEY_ID and _SECRET_ACCESS_KEY"
                )
        self.attachments_allowed_types = [
            t.strip().lower() for t in self.attachments_allowed_types if t.strip()
        ]
        return self
