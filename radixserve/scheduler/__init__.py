"""Queues, admission, retraction and the waiting-queue policies (no torch)."""

from radixserve.scheduler.scheduler import Scheduler

__all__ = ["Scheduler"]
