"""Node tables: instances, jobs, outputs, exports, export attempts, intake failures.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False, index=True),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16)),
        sa.Column("transfer_syntax", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("columns", sa.Integer, nullable=False),
        sa.Column("frames", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("received_at", TZ, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(64)),
        sa.Column("created", TZ, nullable=False),
        sa.Column("started", TZ),
        sa.Column("finished", TZ),
        sa.Column("error", sa.Text),
        sa.Column("timings", sa.JSON),
        sa.Column("model_version", sa.String(128)),
        *[sa.Column(f"{k}_{u}", sa.String(64), nullable=False) for k in ("seg", "sr", "gsps") for u in ("series_uid", "sop_uid")],
        sa.Column("summary", sa.JSON),
    )
    op.create_table(
        "outputs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created", TZ, nullable=False),
    )
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("output_id", sa.Integer, sa.ForeignKey("outputs.id"), nullable=False, index=True),
        sa.Column("destination", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", TZ, nullable=False),
        sa.Column("last_status", sa.String(16)),
        sa.Column("last_error", sa.Text),
    )
    op.create_table(
        "export_attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("export_id", sa.Integer, sa.ForeignKey("exports.id"), nullable=False, index=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("status", sa.String(16)),
        sa.Column("error", sa.Text),
        sa.Column("seconds", sa.Float),
    )
    op.create_table(
        "intake_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for t in ("intake_failures", "export_attempts", "exports", "outputs", "jobs", "instances"):
        op.drop_table(t)
