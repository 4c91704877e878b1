"""Quota accounting on a clock the test moves: each limit refuses exactly what is over it,
names itself, and lets requests in again once the window passes."""

from __future__ import annotations

import pytest

from serving.quotas import QuotaExceeded, Quotas
from serving.tenants import Tenant


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def refusal(quotas: Quotas, tenant: Tenant, num_prompt: int, max_tokens: int) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as err:
        quotas.admit(tenant, num_prompt, max_tokens)
    return err.value


def test_per_request_cap_refuses_exactly_what_is_over(clock) -> None:
    quotas = Quotas(clock)
    tenant = Tenant("acme", max_tokens_per_request=100)
    quotas.admit(tenant, 60, 40).release()  # 100: at the cap
    err = refusal(quotas, tenant, 60, 41)
    assert err.limit == "max_tokens_per_request" and err.retry_after_ms is None
    assert "prompt (60 tokens) + max_tokens (41)" in err.message and "(100)" in err.message
    assert err.message.endswith("max_tokens_per_request (100) of tenant 'acme'")  # no 'acme''s


def test_concurrency_refuses_the_one_over_and_frees_a_slot_on_release(clock) -> None:
    quotas = Quotas(clock)
    tenant = Tenant("acme", max_concurrent_requests=2)
    first, second = quotas.admit(tenant, 5, 5), quotas.admit(tenant, 5, 5)
    err = refusal(quotas, tenant, 5, 5)
    assert err.limit == "max_concurrent_requests" and err.retry_after_ms is None
    assert "2 sequences in flight" in err.message
    first.release()
    first.release()  # idempotent: frees one slot, not two
    third = quotas.admit(tenant, 5, 5)
    refusal(quotas, tenant, 5, 5)
    second.release()
    third.release()
    assert quotas.num_in_flight("acme") == 0


def test_token_bucket_charges_prompts_at_admission_and_output_as_produced(clock) -> None:
    quotas = Quotas(clock)
    tenant = Tenant("acme", max_tokens_per_minute=600)  # 600 tokens, refilled at 10/s
    a = quotas.admit(tenant, 300, 100)  # 300 left
    a.charge(100)  # 200 left
    b = quotas.admit(tenant, 200, 100)  # 0 left: exactly the bucket
    err = refusal(quotas, tenant, 1, 1)
    assert err.limit == "max_tokens_per_minute"
    assert err.retry_after_ms == 100  # 1 token at 10 tokens/s
    b.charge(50)  # generation may run into debt: -50
    err = refusal(quotas, tenant, 20, 1)
    assert err.retry_after_ms == 7000  # (20 + 50) / 10 s
    clock.now += 6.9
    refusal(quotas, tenant, 20, 1)
    clock.now += 0.1  # the window passed: exactly 20 tokens back
    quotas.admit(tenant, 20, 1)
    refusal(quotas, tenant, 1, 1)
    a.release()
    b.release()


def test_the_bucket_refills_to_one_minute_of_tokens_at_most(clock) -> None:
    quotas = Quotas(clock)
    tenant = Tenant("acme", max_tokens_per_minute=60)
    quotas.admit(tenant, 60, 1).release()
    clock.now += 3600
    quotas.admit(tenant, 60, 1).release()
    assert refusal(quotas, tenant, 1, 1).retry_after_ms == 1000
    err = refusal(quotas, tenant, 61, 1)  # more than the bucket ever holds
    assert err.retry_after_ms is None and "can ever hold" in err.message


def test_a_cancelled_admission_gives_back_its_slot_and_its_prompt(clock) -> None:
    quotas = Quotas(clock)
    tenant = Tenant("acme", max_concurrent_requests=1, max_tokens_per_minute=100)
    quotas.admit(tenant, 100, 1).cancel()
    quotas.admit(tenant, 100, 1)  # as if the first had never been


def test_tenants_do_not_share_quota_state(clock) -> None:
    quotas = Quotas(clock)
    acme = Tenant("acme", max_concurrent_requests=1, max_tokens_per_minute=10)
    bolt = Tenant("bolt", max_concurrent_requests=1, max_tokens_per_minute=10)
    quotas.admit(acme, 10, 1)
    refusal(quotas, acme, 1, 1)
    quotas.admit(bolt, 10, 1)


def test_new_limits_apply_to_the_next_call_and_admitted_requests_keep_their_slots(clock) -> None:
    quotas = Quotas(clock)
    held = quotas.admit(Tenant("acme", max_concurrent_requests=5), 10, 10)
    assert quotas.num_in_flight("acme") == 1
    tighter = Tenant("acme", max_concurrent_requests=1, max_tokens_per_minute=30)
    assert refusal(quotas, tighter, 1, 1).limit == "max_concurrent_requests"
    held.release()
    quotas.admit(tighter, 30, 1)  # a new token limit starts with a full bucket
    assert refusal(quotas, tighter, 1, 1).limit == "max_concurrent_requests"


def test_a_tenant_without_limits_is_never_refused(clock) -> None:
    quotas = Quotas(clock)
    admissions = [quotas.admit(Tenant("free"), 10_000, 10_000) for _ in range(100)]
    for admission in admissions:
        admission.charge(10_000)
        admission.release()
    assert quotas.num_in_flight("free") == 0


def test_one_admission_holds_every_sequence_of_its_call(clock) -> None:
    quotas = Quotas(clock)
    tenant = Tenant("acme", max_concurrent_requests=6, max_tokens_per_request=100)
    # Three prompts (30 tokens in all) x n 2: six sequences of up to 10 tokens: 90.
    call = quotas.admit(tenant, 30, 10, n=2, num_prompts=3)
    assert quotas.num_in_flight("acme") == 6
    err = refusal(quotas, tenant, 1, 1)
    assert err.limit == "max_concurrent_requests" and "6 sequences in flight" in err.message
    call.release()
    call.release()  # idempotent: frees its six slots once
    assert quotas.num_in_flight("acme") == 0
    with pytest.raises(QuotaExceeded) as caught:
        quotas.admit(tenant, 30, 12, n=2, num_prompts=3)  # 30 + 6 x 12 = 102
    assert "3 prompts (30 tokens) + max_tokens (12) x 6 sequences" in caught.value.message
    with pytest.raises(QuotaExceeded) as caught:
        quotas.admit(tenant, 1, 1, n=7)  # more sequences than the tenant may ever hold
    assert "this call adds 7" in caught.value.message
    assert quotas.num_in_flight("acme") == 0
