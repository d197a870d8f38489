from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class ReadingCursorPagination(pagination.CursorPagination):
    """Pages through readings by time, so a deep page costs no more than the first."""

    ordering = "time"
    page_size = 1000
    page_size_query_param = "page_size"
    max_page_size = 10000
