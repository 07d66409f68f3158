"""ACLs (KIP-140) and SCRAM credentials (KIP-554) through real admin clients, and the
authorizer enforcing bindings on real producers and consumers. Every PLAINTEXT client is
User:ANONYMOUS; bindings live in cluster metadata, so they survive kill -9."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from kafka import KafkaAdminClient
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
)
from kafka.admin import ResourceType as KpResourceType

from tests.integration.broker import BrokerProcess

ANON = "User:ANONYMOUS"
ALLOW, DENY = AclPermissionType.ALLOW, AclPermissionType.DENY
LIT, PRE, MATCH = (ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED,
                   ResourcePatternType.MATCH)
EVERY_ACL = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                             AclOperation.ANY, AclPermissionType.ANY)


@pytest.fixture
def admin(broker: BrokerProcess) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def acl(rtype: ResourceType, name: str, op: AclOperation, perm: AclPermissionType = ALLOW,
        pattern: ResourcePatternType = LIT, principal: str = ANON) -> AclBinding:
    return AclBinding(rtype, name, pattern, principal, "*", op, perm)


def create_acls(admin: AdminClient, *bindings: AclBinding) -> None:
    for f in admin.create_acls(list(bindings)).values():
        f.result(10)


def delete_acls(admin: AdminClient, f: AclBindingFilter = EVERY_ACL) -> list[AclBinding]:
    return [b for fut in admin.delete_acls([f]).values() for b in fut.result(10)]


def create_topics(admin: AdminClient, *names: str) -> None:
    for f in admin.create_topics([NewTopic(n, 1) for n in names]).values():
        f.result(10)


def produce(bootstrap: str, topic: str, n: int = 3) -> KafkaError | None:
    """Produce n records; the first delivery error, or None when all were stored."""
    errors: list[KafkaError] = []
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10000})
    for i in range(n):
        p.produce(topic, f"v{i}".encode(),
                  on_delivery=lambda err, _m: errors.append(err) if err else None)
    assert p.flush(15) == 0
    return errors[0] if errors else None


def consume(bootstrap: str, topic: str, group: str, want: int) -> list[bytes]:
    """Values read by a subscribed consumer; raises the first consumer error."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got: list[bytes] = []
    try:
        for _ in range(60):
            for m in c.consume(want - len(got), 0.5):
                if m.error():
                    raise KafkaException(m.error())
                got.append(m.value())
            if len(got) >= want:
                break
    finally:
        c.close()
    return got


def test_bindings_round_trip_and_survive_kill9(broker: BrokerProcess,
                                               admin: AdminClient) -> None:
    pre = acl(ResourceType.TOPIC, "orders-", AclOperation.READ, pattern=PRE,
              principal="User:alice")
    eu = acl(ResourceType.TOPIC, "orders-eu", AclOperation.WRITE, principal="User:bob")
    us = acl(ResourceType.TOPIC, "orders-us", AclOperation.WRITE, principal="User:bob")
    grp = acl(ResourceType.GROUP, "billing", AclOperation.READ, principal="User:bob")
    bad = acl(ResourceType.BROKER, "not-the-cluster", AclOperation.ALTER)
    results = admin.create_acls([pre, eu, us, grp, bad])
    for b in (pre, eu, us, grp):
        assert results[b].result(10) is None
    with pytest.raises(KafkaException) as refused:
        results[bad].result(10)
    assert refused.value.args[0].code() == KafkaError.INVALID_REQUEST
    assert "kafka-cluster" in refused.value.args[0].str()

    broker.kill()  # bindings are in metadata before CreateAcls answers
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    match_eu = AclBindingFilter(ResourceType.TOPIC, "orders-eu", MATCH, None, None,
                                AclOperation.ANY, AclPermissionType.ANY)
    assert sorted(map(str, admin.describe_acls(match_eu).result(10))) == sorted(
        map(str, [pre, eu]))
    assert len(admin.describe_acls(EVERY_ACL).result(10)) == 4
    assert sorted(map(str, delete_acls(admin, match_eu))) == sorted(map(str, [pre, eu]))
    assert sorted(map(str, admin.describe_acls(EVERY_ACL).result(10))) == sorted(
        map(str, [us, grp]))


def test_kafka_python_manages_bindings(broker: BrokerProcess) -> None:
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        pattern = ResourcePattern(KpResourceType.TOPIC, "kp-topic", ACLResourcePatternType.LITERAL)
        binding = ACL("User:carol", "*", ACLOperation.DESCRIBE, ACLPermissionType.ALLOW, pattern)
        created = kp.create_acls([binding])
        assert created["succeeded"] == [binding] and not created["failed"]
        f = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                      ResourcePatternFilter(KpResourceType.TOPIC, "kp-topic",
                                            ACLResourcePatternType.MATCH))
        acls, err = kp.describe_acls(f)
        assert [(a.principal, a.operation) for a in acls] == [("User:carol",
                                                                ACLOperation.DESCRIBE)]
        [(_f, deleted, del_err)] = kp.delete_acls([f])
        assert [a.principal for a in deleted] == ["User:carol"] and del_err.errno == 0
        assert kp.describe_acls(f)[0] == []
    finally:
        kp.close()


def test_bindings_are_enforced_on_producers_and_consumers(broker: BrokerProcess,
                                                          admin: AdminClient) -> None:
    create_topics(admin, "guarded", "free")
    assert produce(broker.bootstrap, "guarded") is None
    # A binding on a topic closes it to every principal it does not allow.
    create_acls(admin, acl(ResourceType.TOPIC, "guarded", AclOperation.READ,
                           principal="User:*"),
                acl(ResourceType.TOPIC, "guarded", AclOperation.WRITE, DENY))
    err = produce(broker.bootstrap, "guarded")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert produce(broker.bootstrap, "free") is None
    assert consume(broker.bootstrap, "guarded", "g1", 3) == [b"v0", b"v1", b"v2"]

    delete_acls(admin)
    create_acls(admin, acl(ResourceType.TOPIC, "guarded", AclOperation.READ, DENY))
    with pytest.raises(KafkaException) as denied:
        consume(broker.bootstrap, "guarded", "g2", 3)
    assert denied.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    delete_acls(admin)
    assert produce(broker.bootstrap, "guarded") is None
    assert len(consume(broker.bootstrap, "guarded", "g3", 6)) == 6
    assert "ACL created" in broker.log() and "ACL deleted" in broker.log()


def test_closed_by_default_with_super_users(broker_factory: type[BrokerProcess],
                                            tmp_path: Path) -> None:
    """allow.everyone.if.no.acl.found=false: only what a binding allows (or a super user)
    gets through; bindings made before the switch still apply after a restart."""
    b = broker_factory(data_dir=tmp_path / "closed").start()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    create_topics(admin, "open-a", "closed")
    create_acls(admin, acl(ResourceType.BROKER, "kafka-cluster", AclOperation.DESCRIBE),
                acl(ResourceType.TOPIC, "open-", AclOperation.ALL, pattern=PRE),
                acl(ResourceType.GROUP, "open-", AclOperation.ALL, pattern=PRE))
    b.stop()
    b.settings = {"allow.everyone.if.no.acl.found": "false"}
    b.start()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    assert produce(b.bootstrap, "open-a") is None
    err = produce(b.bootstrap, "closed")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    listed = set(admin.list_topics(timeout=10).topics)
    assert "open-a" in listed and "closed" not in listed
    assert consume(b.bootstrap, "open-a", "open-group", 3) == [b"v0", b"v1", b"v2"]
    with pytest.raises(KafkaException) as denied:
        consume(b.bootstrap, "open-a", "other-group", 3)
    assert denied.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    with pytest.raises(KafkaException) as no_alter:  # ALTER on the cluster is not granted
        create_acls(admin, acl(ResourceType.TOPIC, "closed", AclOperation.ALL))
    assert no_alter.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED

    b.stop()
    b.settings = {"allow.everyone.if.no.acl.found": "false", "super.users": ANON}
    b.start()
    assert produce(b.bootstrap, "closed") is None


def test_authorized_operations_follow_the_bindings(broker: BrokerProcess,
                                                   admin: AdminClient) -> None:
    create_topics(admin, "ops")
    assert produce(broker.bootstrap, "ops") is None
    assert len(consume(broker.bootstrap, "ops", "ops-group", 3)) == 3

    def topic_ops() -> set[str]:
        d = admin.describe_topics(TopicCollection(["ops"]),
                                  include_authorized_operations=True)["ops"].result(10)
        return {op.name for op in d.authorized_operations}

    assert topic_ops() == {"ALTER", "ALTER_CONFIGS", "CREATE", "DELETE", "DESCRIBE",
                           "DESCRIBE_CONFIGS", "READ", "WRITE"}
    cluster = admin.describe_cluster(include_authorized_operations=True).result(10)
    assert {op.name for op in cluster.authorized_operations} == {
        "ALTER", "ALTER_CONFIGS", "CLUSTER_ACTION", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS",
        "IDEMPOTENT_WRITE"}
    group = admin.describe_consumer_groups(
        ["ops-group"], include_authorized_operations=True)["ops-group"].result(10)
    assert {op.name for op in group.authorized_operations} == {"DELETE", "DESCRIBE", "READ"}
    without = admin.describe_topics(TopicCollection(["ops"]))["ops"].result(10)
    assert not without.authorized_operations

    create_acls(admin, acl(ResourceType.TOPIC, "ops", AclOperation.READ))
    assert topic_ops() == {"READ", "DESCRIBE"}


def test_scram_credentials_round_trip_and_persist(broker: BrokerProcess,
                                                  admin: AdminClient) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"

    def describe() -> Any:
        return admin.describe_user_scram_credentials([user])[user].result(10)

    with pytest.raises(KafkaException) as missing:
        describe()
    assert missing.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND
    sha256 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192)
    sha512 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    for info in (sha256, sha512):
        admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            user, info, b"secret-password", b"salt")])[user].result(10)
    too_few = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 100), b"pw", b"salt")])
    with pytest.raises(KafkaException) as refused:
        too_few[user].result(10)
    assert refused.value.args[0].code() == KafkaError.UNACCEPTABLE_CREDENTIAL

    broker.kill()
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    got = describe()
    assert sorted((i.mechanism.name, i.iterations) for i in got.scram_credential_infos) == [
        ("SCRAM_SHA_256", 8192), ("SCRAM_SHA_512", 4096)]
    # Kafka keeps StoredKey and ServerKey, never the salted password the client sent
    salted = hashlib.pbkdf2_hmac("sha256", b"secret-password", b"salt", 8192)
    stored = b"".join(p.read_bytes() for p in broker.data_dir.glob("metadata.db*"))
    assert salted not in stored and base64.b64encode(salted) not in stored
    admin.alter_user_scram_credentials([UserScramCredentialDeletion(
        user, ScramMechanism.SCRAM_SHA_256)])[user].result(10)
    assert [i.iterations for i in describe().scram_credential_infos] == [4096]
    gone = admin.alter_user_scram_credentials([UserScramCredentialDeletion(
        user, ScramMechanism.SCRAM_SHA_256)])
    with pytest.raises(KafkaException) as not_found:
        gone[user].result(10)
    assert not_found.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND


def test_transactional_ids_and_kip848_groups_are_enforced(broker: BrokerProcess,
                                                          admin: AdminClient) -> None:
    create_topics(admin, "txn-topic")
    create_acls(admin, acl(ResourceType.TRANSACTIONAL_ID, "locked-", AclOperation.WRITE, DENY,
                           pattern=PRE),
                acl(ResourceType.GROUP, "locked-", AclOperation.READ, DENY, pattern=PRE))
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "locked-tx"})
    with pytest.raises(KafkaException) as denied:
        p.init_transactions(10)
    assert denied.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    ok = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "free-tx"})
    ok.init_transactions(10)
    ok.begin_transaction()
    ok.produce("txn-topic", b"in-txn")
    ok.commit_transaction(10)

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "locked-848",
                  "group.protocol": "consumer"})
    c.subscribe(["txn-topic"])
    try:
        errors = [m.error() for _ in range(20) if (m := c.poll(0.5)) is not None and m.error()]
        assert errors and errors[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, errors
    finally:
        c.close()
