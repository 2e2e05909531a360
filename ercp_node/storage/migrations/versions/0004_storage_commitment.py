"""Storage commitment requests (Push Model SCP): new table only.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "commitment_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("transaction_uid", sa.String(64), nullable=False),
        sa.Column("duplicate_of", sa.Integer, sa.ForeignKey("commitment_requests.id")),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("instances", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("next_attempt", TZ, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("reported_at", TZ),
        sa.Column("reported_via", sa.String(16)),
        sa.Column("event_type", sa.Integer),
        sa.Column("result", sa.JSON),
        sa.Column("last_status", sa.String(16)),
        sa.Column("last_error", sa.Text),
    )
    # One request per transaction UID; a reuse for other instances is stored with duplicate_of set.
    op.create_index("uq_commitment_transaction", "commitment_requests", ["transaction_uid"], unique=True,
                    sqlite_where=sa.text("duplicate_of IS NULL"), postgresql_where=sa.text("duplicate_of IS NULL"))


def downgrade() -> None:
    op.drop_index("uq_commitment_transaction", table_name="commitment_requests")
    op.drop_table("commitment_requests")
