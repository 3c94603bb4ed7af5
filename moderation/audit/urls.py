from django.urls import path

from . import views as auditlog

urlpatterns = [
    path("", auditlog.audit_log, name="audit_log"),
    path("verify", auditlog.verify_now, name="audit_verify"),
    path("export.csv", auditlog.export_csv, name="audit_export_csv"),
    path("export.jsonl", auditlog.export_jsonl, name="audit_export_jsonl"),
]
