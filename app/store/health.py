"""One row the service rewrites to prove that its database takes writes (GET /ready).

A database that answers SELECT 1 can still refuse every write: a read-only SQLite file, a
PostgreSQL standby or a database set to default_transaction_read_only. The cache and the job
store would then fail on every commit while /ready said "ok". Writing this row is the check.
"""

from __future__ import annotations

from sqlalchemy import Float, Integer
from sqlalchemy.orm import Mapped, mapped_column

from app.store.database import Base


class HealthRecord(Base):
    __tablename__ = "service_health"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checked_at: Mapped[float] = mapped_column(Float(precision=53))
