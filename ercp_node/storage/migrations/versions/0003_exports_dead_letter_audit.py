"""Named destinations' exports get a creation time (for export.max_age_h, the dead-letter), and the audit trail:
an append-only table (UPDATE and DELETE refused by triggers).

Existing databases: every export gets the creation time of its output; rows keep the destination they hold
(AET@HOST:PORT for exports made before destinations had names, which a configured DIMSE destination with that
address still sends: Settings.destination).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("exports") as b:
        b.add_column(sa.Column("created", TZ))
    op.execute("UPDATE exports SET created = (SELECT outputs.created FROM outputs WHERE outputs.id = exports.output_id)")
    op.create_index("ix_exports_destination", "exports", ["destination"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TZ, nullable=False, index=True),
        sa.Column("event", sa.String(32), nullable=False, index=True),
        sa.Column("node", sa.String(64)),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("peer", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64), index=True),
        sa.Column("destination", sa.String(200)),
        sa.Column("outcome", sa.String(32)),
        sa.Column("detail", sa.JSON),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_events_no_{what.lower()} BEFORE {what} ON audit_events "
                       "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END")
    elif dialect == "postgresql":
        op.execute("CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()")


def downgrade() -> None:
    op.drop_table("audit_events")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    op.drop_index("ix_exports_destination", "exports")
    with op.batch_alter_table("exports") as b:
        b.drop_column("created")
