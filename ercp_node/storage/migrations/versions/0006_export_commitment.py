"""Storage commitment toward the PACS (SCU role): exports remember the Transaction UID of their latest N-ACTION and
when its N-EVENT-REPORT is due (states committed / commit-failed need no schema change: state is a string).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exports") as b:
        b.add_column(sa.Column("commit_txn", sa.String(64), nullable=True))
        b.add_column(sa.Column("commit_due", sa.DateTime(timezone=True), nullable=True))
        b.create_index("ix_exports_commit_txn", ["commit_txn"])


def downgrade() -> None:
    with op.batch_alter_table("exports") as b:
        b.drop_index("ix_exports_commit_txn")
        b.drop_column("commit_due")
        b.drop_column("commit_txn")
