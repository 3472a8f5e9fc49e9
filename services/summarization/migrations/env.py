from libs.common.migrations import run_env
from services.summarization.models import metadata

run_env(metadata)
