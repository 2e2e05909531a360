"""Model registry.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.String(128), nullable=False, unique=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("preset", sa.String(32), nullable=False),
        sa.Column("loss", sa.String(64), nullable=False),
        sa.Column("data_fingerprint", sa.String(64)),
        sa.Column("split", sa.JSON),
        sa.Column("metrics", sa.JSON),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("decision", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("model_versions")
