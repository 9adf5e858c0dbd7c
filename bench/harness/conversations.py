"""Multi-turn RAG conversations: who asks what about which document, and when.

N documents of about D tokens (uniform in [0.9 D, 1.1 D]); per document a number of users drawn
uniformly from ``users_per_doc`` asks a number of questions drawn from ``turns_per_user``. Users
arrive as a Poisson process (``user_rate`` users/s, in a shuffled order of documents), and think
for an exponential time (mean ``think_mean`` s) between a reply and their next question. A turn's
prompt is system prompt + document + every earlier question and the answer actually generated +
the new question; it is built at run time from the real outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench.harness.workloads import random_ids


@dataclass
class UserPlan:
    doc: int
    start: float  # seconds after the run starts
    questions: list[list[int]]
    think_times: list[float]  # after turn i, before turn i + 1


@dataclass
class BackgroundRequest:
    start: float  # seconds after the run starts
    prompt: list[int]  # unrelated to every document and to each other


@dataclass
class ConversationPlan:
    system: list[int]
    documents: list[list[int]]
    users: list[UserPlan]
    output_len: int
    background: list[BackgroundRequest] = field(default_factory=list)  # other tenants' traffic

    @property
    def num_turns(self) -> int:
        return sum(len(u.questions) for u in self.users)

    def prompt(self, user: UserPlan, history: list[int], turn: int) -> list[int]:
        return self.system + self.documents[user.doc] + history + user.questions[turn]


def rag_plan(
    num_docs: int,
    doc_len: int,
    users_per_doc: tuple[int, int],
    turns_per_user: tuple[int, int],
    system_len: int,
    question_len: int,
    output_len: int,
    user_rate: float,
    think_mean: float,
    vocab_size: int,
    seed: int,
) -> ConversationPlan:
    rng = np.random.default_rng(seed)
    system = random_ids(rng, system_len, vocab_size)
    documents = [
        random_ids(rng, int(rng.integers(0.9 * doc_len, 1.1 * doc_len + 1)), vocab_size) for _ in range(num_docs)
    ]
    docs_of_users = [
        d for d in range(num_docs) for _ in range(int(rng.integers(users_per_doc[0], users_per_doc[1] + 1)))
    ]
    rng.shuffle(docs_of_users)
    starts = np.cumsum(np.concatenate([[0.0], rng.exponential(1.0 / user_rate, len(docs_of_users) - 1)]))
    users = []
    for doc, start in zip(docs_of_users, starts):
        turns = int(rng.integers(turns_per_user[0], turns_per_user[1] + 1))
        questions = [random_ids(rng, question_len, vocab_size) for _ in range(turns)]
        users.append(UserPlan(doc, float(start), questions, rng.exponential(think_mean, turns).tolist()))
    return ConversationPlan(system, documents, users, output_len)


def background_traffic(rate: float, count: int, prompt_len: int, vocab_size: int, seed: int) -> list[BackgroundRequest]:
    """``count`` random prompts of about ``prompt_len`` tokens (uniform in [0.5, 1.5] x), arriving
    as a Poisson process at ``rate`` per second from t = 0: another tenant's traffic, sharing
    nothing with the conversations, competing with them for the KV pool."""
    if count <= 0 or rate <= 0:
        return []
    rng = np.random.default_rng(seed + 7919)
    starts = np.cumsum(rng.exponential(1.0 / rate, count))
    lengths = rng.integers(max(1, prompt_len // 2), prompt_len * 3 // 2 + 1, count)
    return [BackgroundRequest(float(t), random_ids(rng, int(n), vocab_size)) for t, n in zip(starts, lengths)]
