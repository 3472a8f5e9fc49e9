from libs.common.settings import CommonSettings


class Settings(CommonSettings):
    service_name: str = "summarization"
