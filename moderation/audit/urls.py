from django.urls import path

from . import views as auditlog

urlpatterns = [
    path("", auditlog.audit_log, name="audit_log"),
    path("verify", auditlog.verify_now, name="audit_verify"),
    path("export.csv", auditlog.export_csv, name="audit_export_csv"),
    path("export.jsonl", auditlog.export_jsonl, name="audit_export_jsonl"),
    path("entries/<str:seq>", auditlog.entry_content, name="audit_entry"),
    path("entries/<str:seq>/proof", auditlog.entry_proof, name="audit_entry_proof"),
    path("checkpoint", auditlog.latest_checkpoint, name="audit_checkpoint"),
]
