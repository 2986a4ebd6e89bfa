"""The ``amazonec2`` driver against moto's EC2 server, without the engine.

The driver runs in this process and reaches moto on 127.0.0.1 through
``endpointUrl``. Tests that need a created machine use ``provision``, which is
create without its SSH login: no test here dials an instance address.
"""

from __future__ import annotations

import itertools
import types

import asyncssh
import botocore.exceptions
import pytest

from provider import loopback
from provider.drivers import amazonec2, ec2_api, ec2_settings
from provider.drivers.common import host_outputs
from provider.errors import DockerMachineError, InvalidInputError, SSHConnectError
from provider.resources.host import HostProvider
from tests.harness.moto_ec2 import AMI_PARAMETER, REGION
from tests.harness.netguard import check_dialable

DRIVER = amazonec2.DRIVER
WORKSTATION = "203.0.113.7/32"


@pytest.fixture
def moto(moto_ec2):
    """The session's moto server."""
    return moto_ec2


@pytest.fixture
def driver_events(moto):
    """Register boto3 event handlers on the session the driver's clients come from.

    The driver builds a client per operation from one boto3 session per
    profile and region, and each client copies the session's handlers when it
    is made. So a handler registered here sees the driver's calls, and a
    handler that raises is a fault of the API, not a change to the driver.
    Every handler is removed when the test ends.
    """
    session = ec2_api._session(ec2_settings.resolve({"region": REGION}))
    registered = []

    def register(event, handler):
        unique_id = f"test-{next(_handler_ids)}"
        session.events.register(event, handler, unique_id=unique_id)
        registered.append((event, unique_id))

    yield register
    for event, unique_id in registered:
        session.events.unregister(event, unique_id=unique_id)


_handler_ids = itertools.count()


def api_fault(operation, code="InternalError", status=500):
    """Return a before/after-call handler that fails ``operation`` with ``code``."""

    def fail(**_):
        raise botocore.exceptions.ClientError(
            {
                "Error": {"Code": code, "Message": f"injected by the test ({operation})"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            operation,
        )

    return fail


def host_props(moto, name="web", ssh_private_key=None, state=None, **options):
    """Return Host inputs for a machine on moto, as check passes them on."""
    settings = {
        "endpointUrl": moto.endpoint_url,
        "region": REGION,
        "amiParameter": AMI_PARAMETER,
        "allowedCidrs": [WORKSTATION],
        **options,
    }
    return {
        "driver": "amazonec2",
        "machine_name": name,
        "address": None,
        "ssh_port": 22,
        "ssh_user": "root",
        "ssh_private_key": ssh_private_key,
        "pinned_host_key": None,
        "state": state,
        "options": settings,
    }


def provisioned(props):
    """Provision a machine and return the outputs create would return."""
    details, private_key = DRIVER.provision(props)
    # No SSH login happens, so the key's own public half serves as the host key.
    stand_in = asyncssh.import_private_key(private_key).export_public_key().decode()
    return host_outputs(
        props,
        address=details.pop("address"),
        ssh_port=22,
        ssh_private_key=private_key,
        host_key=stand_in.strip(),
        os_name="not logged in",
        details=details,
    )


def describe(moto, instance_id):
    """Return moto's description of one instance."""
    reply = moto.client().describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]


def ingress(moto, group_id):
    """Return the ingress rules of a group as (protocol, port, cidr) triples."""
    group = moto.client().describe_security_groups(GroupIds=[group_id])
    rules = set()
    for permission in group["SecurityGroups"][0]["IpPermissions"]:
        for ip_range in permission.get("IpRanges", []):
            rules.add((permission["IpProtocol"], permission["FromPort"], ip_range["CidrIp"]))
    return rules


def messages(failures):
    """Return the reasons of check failures, one string."""
    return "\n".join(failure.reason for failure in failures)


BAD_SETTINGS = [
    ("region", {"region": "us-north-9"}, "amazonec2.region 'us-north-9'"),
    ("cidr-host-bits", {"allowedCidrs": ["10.1.2.3/8"]}, "amazonec2.allowedCidrs '10.1.2.3/8'"),
    ("cidr-garbage", {"allowedCidrs": ["my-office"]}, "amazonec2.allowedCidrs 'my-office'"),
    ("instance-type", {"instanceType": "T3 micro"}, "amazonec2.instanceType 'T3 micro'"),
    ("root-negative", {"rootSize": -8}, "amazonec2.rootSize -8"),
    ("spot-price-alone", {"spotPrice": "0.02"}, "set only with spot: true"),
    ("ami", {"ami": "ubuntu"}, "amazonec2.ami 'ubuntu'"),
    ("subnet", {"subnetId": "sub-1"}, "amazonec2.subnetId 'sub-1'"),
    ("port", {"extraPorts": [70000]}, "amazonec2.extraPorts 70000"),
    ("volume-type", {"volumeType": "ssd"}, "amazonec2.volumeType 'ssd'"),
    ("no-cidrs", {"allowedCidrs": []}, "amazonec2.allowedCidrs [] : missing"),
    ("eip-conflict", {"elasticIp": False, "elasticIpAllocationId": "eipalloc-0123abcd"},
     "given with elasticIp: false"),
    ("key-without-private-key", {"keyPairName": "mine"}, "needs its private key"),
    ("spot-price-nan", {"spot": True, "spotPrice": "nan"}, "amazonec2.spotPrice 'nan'"),
    ("spot-price-inf", {"spot": True, "spotPrice": "inf"}, "amazonec2.spotPrice 'inf'"),
    ("spot-price-zero", {"spot": True, "spotPrice": 0}, "remove spotPrice to pay"),
    ("port-true", {"extraPorts": [True]}, "amazonec2.extraPorts True: must be a port"),
    ("port-fraction", {"extraPorts": [80.7]}, "amazonec2.extraPorts 80.7: must be a port"),
    ("port-nan", {"extraPorts": [float("nan")]}, "amazonec2.extraPorts nan: must be a port"),
    ("port-inf", {"extraPorts": [float("inf")]}, "amazonec2.extraPorts inf: must be a port"),
    ("private-with-eip-id",
     {"privateAddressOnly": True, "elasticIpAllocationId": "eipalloc-0123abcd"},
     "amazonec2.elasticIpAllocationId 'eipalloc-0123abcd': an Elastic IP is a public "
     "address, but privateAddressOnly is true; remove elasticIpAllocationId or "
     "privateAddressOnly"),
    ("tag-name-empty", {"tags": {"Name": ""}}, "amazonec2.tags.Name '': an empty Name"),
    ("tag-name-blank", {"tags": {"Name": "  "}}, "remove the Name tag to have the machine name"),
    ("zone-full-name", {"zone": "us-east-1a"},
     "amazonec2.zone 'us-east-1a': malformed; give a value such as 'a'; give only the letter"),
    ("ami-parameter-empty", {"amiParameter": ""},
     "amazonec2.amiParameter '': must be a non-empty string; give the name of an SSM parameter"),
    ("vpc-name", {"vpcId": "default"},
     "amazonec2.vpcId 'default': malformed; give a value such as 'vpc-0123abcd', "
     "or remove vpcId"),
    ("kms-number", {"kmsKeyId": 42},
     "amazonec2.kmsKeyId 42: must be a non-empty string; give a KMS key"),
    ("instance-profile-empty", {"iamInstanceProfile": " "},
     "amazonec2.iamInstanceProfile ' ': must be a non-empty string; give the name of an IAM"),
    ("tags-list", {"tags": ["team=web"]}, "amazonec2.tags ['team=web']: must be a mapping"),
    ("tag-key-aws", {"tags": {"aws:owner": "me"}}, "amazonec2.tags 'aws:owner': tag keys"),
    ("tag-key-driver", {"tags": {"docker-machine:machine": "x"}},
     "amazonec2.tags 'docker-machine:machine': tag keys have at most 128 characters and "
     "must not start with 'docker-machine:'"),
    ("tag-value-number", {"tags": {"cost": 12}},
     "amazonec2.tags.cost 12: tag values must be strings; quote"),
    ("tag-value-long", {"tags": {"note": "x" * 257}}, "amazonec2.tags.note '<257 characters>'"),
    ("user-data-number", {"userData": 1}, "amazonec2.userData 1: must be text"),
    ("user-data-large", {"userData": "x" * 20000},
     "amazonec2.userData '<20000 bytes>': EC2 accepts at most 16 KiB; compress it"),
    ("spot-string", {"spot": "yes"}, "amazonec2.spot 'yes': must be true or false, unquoted"),
    ("private-string", {"privateAddressOnly": "true"},
     "amazonec2.privateAddressOnly 'true': must be true or false"),
    ("monitoring-number", {"monitoring": 1}, "amazonec2.monitoring 1: must be true or false"),
    ("ebs-optimized-string", {"ebsOptimized": "no"}, "amazonec2.ebsOptimized 'no': must be true"),
    ("elastic-ip-string", {"elasticIp": "false"}, "amazonec2.elasticIp 'false': must be true"),
    ("endpoint-no-scheme", {"endpointUrl": "localhost:5000"},
     "amazonec2.endpointUrl 'localhost:5000': must be an http:// or https:// URL such as"),
    ("endpoint-bad-ipv6", {"endpointUrl": "http://[::1"},
     "amazonec2.endpointUrl 'http://[::1': must be an http"),
    ("profile-empty", {"profile": ""},
     "amazonec2.profile '': must be a non-empty string; give a profile of ~/.aws/config"),
    ("retry-mode", {"retryMode": "legacy"},
     "amazonec2.retryMode 'legacy': use one of: standard, adaptive"),
    ("security-groups-string", {"securityGroupIds": "sg-0123abcd", "allowedCidrs": None},
     "amazonec2.securityGroupIds 'sg-0123abcd': must be a non-empty list such as ['sg-0123abcd']"),
    ("security-groups-empty", {"securityGroupIds": [], "allowedCidrs": None},
     "amazonec2.securityGroupIds []: must be a non-empty list"),
    ("security-group-name", {"securityGroupIds": ["default"], "allowedCidrs": None},
     "amazonec2.securityGroupIds 'default': malformed; give a value such as 'sg-0123abcd'"),
    ("eip-address", {"elasticIpAllocationId": "54.1.2.3"},
     "amazonec2.elasticIpAllocationId '54.1.2.3': malformed; give a value such as "
     "'eipalloc-0123abcd': the AllocationId"),
    ("ssh-timeout-zero", {"sshTimeout": 0},
     "amazonec2.sshTimeout 0: must be a whole number of seconds from 1 to 3600"),
    ("ssh-timeout-text", {"sshTimeout": "5m"}, "amazonec2.sshTimeout '5m': must be a whole number"),
    ("ssh-timeout-true", {"sshTimeout": True}, "amazonec2.sshTimeout True: must be a whole number"),
    ("engine-port-zero", {"enginePort": 0},
     "amazonec2.enginePort 0: must be a port number from 1 to 65535"),
    ("engine-port-high", {"enginePort": 70000}, "amazonec2.enginePort 70000: must be a port number"),
    ("engine-port-fraction", {"enginePort": 2376.5}, "amazonec2.enginePort 2376.5: must be a port"),
]


@pytest.mark.parametrize(
    "options, expected",
    [case[1:] for case in BAD_SETTINGS],
    ids=[case[0] for case in BAD_SETTINGS],
)
def test_check_rejects_bad_setting(options, expected):
    settings = {"allowedCidrs": [WORKSTATION], **options}
    failures = DRIVER.check({"options": settings, "ssh_private_key": None})
    assert failures, f"{options} passed check"
    assert expected.replace(" : ", ": ") in messages(failures)


def test_check_reports_every_bad_setting():
    options = {"region": "mars-1", "rootSize": -1, "spotPrice": "1", "allowedCidrs": []}
    text = messages(DRIVER.check({"options": options}))
    for name in ("region", "rootSize", "spotPrice", "allowedCidrs"):
        assert f"amazonec2.{name}" in text


def test_check_accepts_minimal_settings():
    assert DRIVER.check({"options": {"allowedCidrs": [WORKSTATION]}}) == []


def test_check_accepts_whole_numbers_as_doubles():
    # The engine passes numbers as doubles: 80.0 is port 80.
    options = {"allowedCidrs": [WORKSTATION], "extraPorts": [80.0, "53/udp"], "enginePort": 2376.0}
    assert DRIVER.check({"options": options}) == []
    assert ec2_settings.check_ports([80.0, 443]) == ["80/tcp", "443/tcp"]


def test_check_accepts_spot_price_and_named_tags():
    options = {
        "allowedCidrs": [WORKSTATION],
        "spot": True,
        "spotPrice": "0.02",
        "tags": {"Name": "front", "team": ""},
    }
    assert DRIVER.check({"options": options}) == []


def test_check_rejects_address():
    failures = DRIVER.check({"options": {"allowedCidrs": [WORKSTATION]}, "address": "1.2.3.4"})
    assert "takes the address from the instance" in messages(failures)


def test_default_path_creates_hardened_instance(moto):
    before = moto.inventory()
    outputs = provisioned(host_props(moto))
    details = outputs["details"]
    instance = describe(moto, details["instance_id"])
    ec2 = moto.client()

    assert instance["State"]["Name"] == "running"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["KeyName"] == details["key_pair_created"]
    assert {"Key": "Name", "Value": "web"} in instance["Tags"]
    volume_id = instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    assert volume["Encrypted"] is True
    assert volume["Size"] == 16
    assert volume["VolumeType"] == "gp3"

    assert details["generated_key"] is True
    assert asyncssh.import_private_key(outputs["ssh_private_key"]).algorithm == b"ssh-ed25519"
    assert details["key_pair_created"] in moto.inventory()["key_pairs"]

    group = details["security_group_created"]
    assert ingress(moto, group) == {("tcp", 22, WORKSTATION), ("tcp", 2376, WORKSTATION)}

    address = ec2.describe_addresses(AllocationIds=[details["elastic_ip_created"]])
    assert address["Addresses"][0]["InstanceId"] == details["instance_id"]
    assert outputs["address"] == address["Addresses"][0]["PublicIp"]

    DRIVER.delete(details["instance_id"], outputs)
    assert moto.inventory() == before


def test_failed_run_removes_key_and_group(moto):
    before = moto.inventory()
    props = host_props(moto, iamInstanceProfile="no-such-profile")
    with pytest.raises(DockerMachineError, match="run the instance.*no-such-profile"):
        DRIVER.provision(props)
    assert moto.inventory() == before


def test_ssh_timeout_removes_everything(moto, capsys):
    # An Elastic IP at a leased loopback address where nothing listens on port 22.
    lease = loopback.take("127.100.0.201", ports=(22,), holder="amazonec2 test")
    try:
        ec2 = moto.client()
        allocation = ec2.allocate_address(Domain="vpc", Address=check_dialable(lease.address))
        before = moto.inventory()
        props = host_props(
            moto, elasticIpAllocationId=allocation["AllocationId"], sshTimeout=2
        )
        with pytest.raises(SSHConnectError, match="127.100.0.201") as raised:
            DRIVER.create(props)
        assert moto.inventory() == before
        # The wait states its real bound and the setting that raises it.
        assert "within the 2 s of amazonec2.sshTimeout" in str(raised.value)
        assert str(raised.value).endswith("raise amazonec2.sshTimeout")
        out = capsys.readouterr().out
        assert "of the 2 s that amazonec2.sshTimeout allows): connection refused" in out
        assert " of 1000" not in out
        ec2.release_address(AllocationId=allocation["AllocationId"])
    finally:
        loopback.release(lease.address)


@pytest.fixture
def other_vpc_subnet(moto):
    """A subnet of a VPC other than the default one."""
    ec2 = moto.client()
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    yield subnet
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=vpc)


def default_vpc(moto):
    """Return the id of moto's default VPC."""
    vpcs = moto.client().describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
    return vpcs["Vpcs"][0]["VpcId"]


def test_subnet_outside_vpc_rejected_at_create(moto, other_vpc_subnet):
    before = moto.inventory()
    props = host_props(moto, vpcId=default_vpc(moto), subnetId=other_vpc_subnet)
    with pytest.raises(InvalidInputError, match=f"subnetId '{other_vpc_subnet}'.*belongs to"):
        DRIVER.create(props)
    assert moto.inventory() == before


def test_unknown_key_pair_rejected_at_create(moto):
    before = moto.inventory()
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    props = host_props(moto, ssh_private_key=key, keyPairName="no-such-key")
    with pytest.raises(InvalidInputError, match="keyPairName 'no-such-key': no such key pair"):
        DRIVER.create(props)
    assert moto.inventory() == before


def test_unknown_ami_rejected_at_create(moto):
    before = moto.inventory()
    props = host_props(moto, ami="ami-0123456789abcdef0")
    with pytest.raises(InvalidInputError, match="no such AMI in us-east-1"):
        DRIVER.create(props)
    assert moto.inventory() == before


def test_unknown_profile_rejected_at_create(moto, tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.write_text("[profile other]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    before = moto.inventory()
    props = host_props(moto, profile="no-such-profile")
    with pytest.raises(DockerMachineError, match="amazonec2.profile 'no-such-profile': no such profile"):
        DRIVER.create(props)
    assert moto.inventory() == before


REPLACE_CASES = [
    ("ami", {"ami": "ami-0123456789abcdef0"}, ["options"]),
    ("subnet", {"subnetId": "subnet-0123abcd"}, ["options"]),
    ("region", {"region": "eu-west-1"}, ["options"]),
    ("root-size", {"rootSize": 32}, ["options"]),
    ("key-pair", {"keyPairName": "mine"}, ["options"]),
    ("tags", {"tags": {"team": "web"}}, []),
    ("instance-type", {"instanceType": "t3.large"}, []),
    ("cidrs", {"allowedCidrs": ["198.51.100.0/24"]}, []),
    ("extra-ports", {"extraPorts": [80]}, []),
    ("default-made-explicit", {"region": "us-east-1", "rootSize": 16}, []),
]


@pytest.mark.parametrize(
    "change, expected",
    [case[1:] for case in REPLACE_CASES],
    ids=[case[0] for case in REPLACE_CASES],
)
def test_update_or_replace(change, expected):
    olds = {"options": {"allowedCidrs": [WORKSTATION]}}
    news = {"options": {**olds["options"], **change}}
    assert DRIVER.replaces(olds, news) == expected


def test_diff_ignores_outputs_the_driver_sets(moto):
    olds = {
        **host_props(moto),
        "address": "127.1.2.3",
        "ssh_private_key": "generated",
        "state": "running",
        "details": {"generated_key": True},
    }
    news = host_props(moto)
    assert DRIVER.changed_inputs(olds, news, tuple(news)) == []
    news["state"] = "stopped"
    assert DRIVER.changed_inputs(olds, news, tuple(news)) == ["state"]


def test_update_in_place(moto):
    props = host_props(moto, tags={"team": "web", "old": "x"})
    olds = provisioned(props)
    instance_id = olds["details"]["instance_id"]
    news = host_props(
        moto,
        name="web-renamed",
        tags={"team": "api"},
        instanceType="t3.large",
        allowedCidrs=["198.51.100.0/24"],
        extraPorts=["8080/tcp"],
    )
    try:
        outputs = DRIVER.update(instance_id, olds, news)
        instance = describe(moto, instance_id)
        tags = {tag["Key"]: tag["Value"] for tag in instance["Tags"]}
        assert tags["Name"] == "web-renamed"
        assert tags["team"] == "api"
        assert "old" not in tags
        assert instance["InstanceType"] == "t3.large"
        assert instance["State"]["Name"] == "running"
        assert outputs["state"] == "running"
        assert outputs["address"] == olds["address"]
        assert ingress(moto, olds["details"]["security_group_created"]) == {
            ("tcp", 22, "198.51.100.0/24"),
            ("tcp", 2376, "198.51.100.0/24"),
            ("tcp", 8080, "198.51.100.0/24"),
        }
    finally:
        DRIVER.delete(instance_id, olds)


def test_state_changes_in_place(moto):
    olds = provisioned(host_props(moto))
    instance_id = olds["details"]["instance_id"]
    try:
        stopped = DRIVER.update(instance_id, olds, host_props(moto, state="stopped"))
        assert stopped["state"] == "stopped"
        assert describe(moto, instance_id)["State"]["Name"] == "stopped"

        running = DRIVER.update(instance_id, stopped, host_props(moto, state="running"))
        assert running["state"] == "running"
        assert describe(moto, instance_id)["State"]["Name"] == "running"
        assert running["address"] == olds["details"]["elastic_ip"]
    finally:
        DRIVER.delete(instance_id, olds)


def test_read_after_stop_and_terminate(moto):
    outputs = provisioned(host_props(moto))
    instance_id = outputs["details"]["instance_id"]
    ec2 = moto.client()
    try:
        assert DRIVER.read(instance_id, outputs)["state"] == "running"
        ec2.stop_instances(InstanceIds=[instance_id])
        assert DRIVER.read(instance_id, outputs)["state"] == "stopped"
        ec2.modify_instance_attribute(InstanceId=instance_id, InstanceType={"Value": "m5.large"})
        assert DRIVER.read(instance_id, outputs)["options"]["instanceType"] == "m5.large"
        ec2.terminate_instances(InstanceIds=[instance_id])
        assert DRIVER.read(instance_id, outputs) is None
    finally:
        DRIVER.delete(instance_id, outputs)


def test_delete_keeps_what_user_brought(moto):
    ec2 = moto.client()
    key = asyncssh.generate_private_key("ssh-ed25519")
    ec2.import_key_pair(KeyName="user-key", PublicKeyMaterial=key.export_public_key())
    vpc = default_vpc(moto)
    group = ec2.create_security_group(GroupName="user-group", Description="u", VpcId=vpc)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    props = host_props(
        moto,
        ssh_private_key=key.export_private_key().decode(),
        keyPairName="user-key",
        securityGroupIds=[group["GroupId"]],
        elasticIpAllocationId=allocation,
        allowedCidrs=None,
    )
    outputs = provisioned(props)
    details = outputs["details"]
    assert details["key_pair_created"] is None
    assert details["security_group_created"] is None
    assert details["elastic_ip_created"] is None

    DRIVER.delete(details["instance_id"], outputs)
    left = moto.inventory()
    assert details["instance_id"] not in left["instances"]
    assert "user-key" in left["key_pairs"]
    assert group["GroupId"] in left["security_groups"]
    assert allocation in left["elastic_ips"]
    assert details["association_id"] not in left["associations"]
    ec2.release_address(AllocationId=allocation)
    ec2.delete_security_group(GroupId=group["GroupId"])
    ec2.delete_key_pair(KeyName="user-key")


def test_settings_resolve_private_address_only():
    settings = ec2_settings.resolve({"privateAddressOnly": True})
    assert settings["elasticIp"] is False


def test_region_check_builds_botocore_session_once(monkeypatch):
    made = []
    real = ec2_settings.botocore.session.get_session

    def counting_get_session(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ec2_settings.botocore.session, "get_session", counting_get_session)
    for region in ("us-east-1", "eu-west-1", "us-east-1"):
        ec2_settings.check_region(region)
    # None when an earlier check of this process made the list already.
    assert len(made) <= 1


def test_client_token_fits_ec2_limit_for_longest_name(moto):
    name = "w" * 63  # the longest machine name check_machine_name accepts
    tokens = []
    for _ in range(2):
        outputs = provisioned(host_props(moto, name=name))
        instance_id = outputs["details"]["instance_id"]
        try:
            # moto stores the ClientToken without enforcing EC2's 64-character limit.
            tokens.append(describe(moto, instance_id)["ClientToken"])
        finally:
            DRIVER.delete(instance_id, outputs)
    for token in tokens:
        assert len(token) <= 64, token
        assert token.startswith("docker-machine-www")
    assert tokens[0] != tokens[1], "a second create attempt reused the client token"


@pytest.fixture
def aws_spot_requests(moto, driver_events):
    """Make moto reply to a spot RunInstances the way EC2 does, with a spot request.

    NOTE: moto's RunInstances marks a spot instance but makes no spot request
    (moto 5.2). This handler makes one through moto's RequestSpotInstances, a
    persistent one as the driver asks for, and puts its id into the
    RunInstances reply, as EC2 does. moto launches a stand-in instance for
    that request, which the fixture terminates at the end. Yields the ids
    of the requests made (``requests``) and of the stand-ins (``stand_ins``).
    moto forgets a cancelled request at once, where EC2 lists it as
    cancelled for a while.
    """
    made = types.SimpleNamespace(requests=[], stand_ins=[])

    def add_spot_request(parsed, **_):
        launched = parsed["Instances"][0]
        if launched.get("InstanceLifecycle") != "spot":
            return
        request = moto.client().request_spot_instances(
            Type="persistent",
            InstanceInterruptionBehavior="stop",
            LaunchSpecification={"ImageId": launched["ImageId"], "InstanceType": "t3.micro"},
        )["SpotInstanceRequests"][0]
        made.requests.append(request["SpotInstanceRequestId"])
        made.stand_ins.append(stand_in_of(moto, request["SpotInstanceRequestId"]))
        launched["SpotInstanceRequestId"] = request["SpotInstanceRequestId"]

    driver_events("after-call.ec2.RunInstances", add_spot_request)
    yield made
    ec2 = moto.client()
    left = open_spot_requests(moto) & set(made.requests)
    if left:
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=sorted(left))
    if made.stand_ins:
        ec2.terminate_instances(InstanceIds=made.stand_ins)


def stand_in_of(moto, request_id):
    """Return the instance moto launched for a spot request."""
    requests = moto.client().describe_spot_instance_requests(SpotInstanceRequestIds=[request_id])
    return requests["SpotInstanceRequests"][0]["InstanceId"]


def open_spot_requests(moto):
    """Return the ids of spot requests that could still launch an instance."""
    requests = moto.client().describe_spot_instance_requests()["SpotInstanceRequests"]
    live = ("open", "active", "disabled")
    return {r["SpotInstanceRequestId"] for r in requests if r["State"] in live}


def test_spot_delete_cancels_request_before_terminating(moto, aws_spot_requests):
    props = host_props(moto, spot=True, spotPrice="0.02")
    outputs = provisioned(props)
    details = outputs["details"]
    assert describe(moto, details["instance_id"])["InstanceLifecycle"] == "spot"
    assert details["spot_request_id"] == aws_spot_requests.requests[0]
    assert aws_spot_requests.requests[0] in open_spot_requests(moto)

    actions = moto.recorded_actions(lambda: DRIVER.delete(details["instance_id"], outputs))
    assert aws_spot_requests.requests[0] not in open_spot_requests(moto)
    # Cancelled first, or EC2 would launch another instance for the open request.
    assert actions.index("CancelSpotInstanceRequests") < actions.index("TerminateInstances")
    assert details["instance_id"] not in moto.inventory()["instances"]


def test_spot_delete_of_older_state_asks_ec2_for_request(moto, aws_spot_requests, driver_events):
    outputs = provisioned(host_props(moto, spot=True))
    outputs["details"].pop("spot_request_id")  # as a state written before it was kept
    instance_id = outputs["details"]["instance_id"]
    request = aws_spot_requests.requests[0]

    def add_request_id(parsed, **_):
        # NOTE: moto's description has no SpotInstanceRequestId; EC2's has.
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                if instance["InstanceId"] == instance_id:
                    instance["SpotInstanceRequestId"] = request

    driver_events("after-call.ec2.DescribeInstances", add_request_id)
    DRIVER.delete(instance_id, outputs)
    assert request not in open_spot_requests(moto)


def test_failed_spot_create_cancels_request(moto, aws_spot_requests, driver_events):
    before = moto.inventory()
    driver_events("before-call.ec2.AllocateAddress", api_fault("AllocateAddress"))

    def failing_create():
        with pytest.raises(DockerMachineError, match="allocate an Elastic IP.*InternalError"):
            DRIVER.provision(host_props(moto, spot=True))

    actions = moto.recorded_actions(failing_create)
    assert aws_spot_requests.requests, "the spot instance was not launched"
    assert aws_spot_requests.requests[0] not in open_spot_requests(moto)
    assert actions.index("CancelSpotInstanceRequests") < actions.index("TerminateInstances")
    after = moto.inventory()
    # Only moto's stand-in instance of the request is left; the fixture ends it.
    assert after["instances"] - before["instances"] == set(aws_spot_requests.stand_ins)
    assert {**after, "instances": None} == {**before, "instances": None}


def test_spot_instance_type_change_replaces():
    olds = {"options": {"allowedCidrs": [WORKSTATION], "spot": True}}
    news = {"options": {**olds["options"], "instanceType": "t3.large"}}
    assert DRIVER.replaces(olds, news) == ["options"]


def test_run_failure_after_launch_terminates_instance(moto, driver_events):
    # The instance is launched, then the reply is lost: what botocore gives
    # up with after its retries of a 5xx response or a time-out.
    before = moto.inventory()
    launched = []

    def lose_reply(parsed, **_):
        launched.append(parsed["Instances"][0]["InstanceId"])
        api_fault("RunInstances")()

    driver_events("after-call.ec2.RunInstances", lose_reply)
    with pytest.raises(DockerMachineError, match="run the instance: InternalError"):
        DRIVER.provision(host_props(moto))
    assert launched, "RunInstances was not called"
    assert describe(moto, launched[0])["State"]["Name"] == "terminated"
    assert moto.inventory() == before


def test_refused_run_looks_once_for_an_instance(moto, driver_events, capsys):
    before = moto.inventory()
    driver_events(
        "before-call.ec2.RunInstances",
        api_fault("RunInstances", code="InsufficientInstanceCapacity", status=400),
    )
    actions = moto.recorded_actions(
        lambda: pytest.raises(DockerMachineError, DRIVER.provision, host_props(moto))
    )
    assert actions.count("DescribeInstances") == 1
    out = capsys.readouterr().out
    assert "no instance was launched with client token docker-machine-web-" in out
    assert moto.inventory() == before


def test_unanswered_run_looks_for_an_instance_several_times(
    moto, driver_events, monkeypatch, capsys
):
    monkeypatch.setattr(amazonec2, "LAUNCH_LOOK_DELAY", 0.01)  # the looks' spacing only
    before = moto.inventory()
    driver_events("before-call.ec2.RunInstances", api_fault("RunInstances"))
    actions = moto.recorded_actions(
        lambda: pytest.raises(DockerMachineError, DRIVER.provision, host_props(moto))
    )
    assert actions.count("DescribeInstances") == amazonec2.LAUNCH_LOOKS
    out = capsys.readouterr().out
    assert f"(look 1 of {amazonec2.LAUNCH_LOOKS}); looking again" in out
    assert moto.inventory() == before


KEY_A = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
KEY_B = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.mark.parametrize(
    "old_key, generated, new_key, replaced",
    [
        (KEY_A, False, KEY_B, True),  # another key given
        (KEY_A, True, KEY_B, True),  # a key given where one was generated
        (KEY_A, False, None, True),  # the given key removed: one is generated
        (KEY_A, True, None, False),  # the generated key kept
        (KEY_A, False, KEY_A, False),  # the same key
    ],
    ids=["changed", "given-after-generated", "removed", "generated-kept", "same"],
)
def test_ssh_key_change_replaces_host(moto, old_key, generated, new_key, replaced):
    olds = {
        **host_props(moto, ssh_private_key=old_key),
        "state": "running",
        "details": {"generated_key": generated},
    }
    news = host_props(moto, ssh_private_key=new_key)
    result = HostProvider().diff("i-0123456789abcdef0", olds, news)
    if replaced:
        assert result.changes is True
        assert result.replaces == ["ssh_private_key"]
        assert result.delete_before_replace is True
    else:
        assert not result.replaces
        assert not result.changes


def test_elastic_ip_opt_out(moto):
    before = moto.inventory()
    # provisioned() stops before the SSH login: the instance's address is
    # moto's made-up public address, which no test may dial.
    outputs = provisioned(host_props(moto, elasticIp=False))
    details = outputs["details"]
    try:
        instance = describe(moto, details["instance_id"])
        assert outputs["address"] == instance["PublicIpAddress"]
        with pytest.raises(AssertionError, match="refusing to dial"):
            check_dialable(outputs["address"])
        assert not details.get("elastic_ip_created")
        assert not details.get("association_id")
        assert moto.inventory()["elastic_ips"] == before["elastic_ips"]
    finally:
        DRIVER.delete(details["instance_id"], outputs)
    assert moto.inventory() == before


def test_failed_association_releases_allocated_elastic_ip(moto, driver_events):
    before = moto.inventory()
    allocated = []
    driver_events(
        "after-call.ec2.AllocateAddress",
        lambda parsed, **_: allocated.append(parsed["AllocationId"]),
    )
    driver_events("before-call.ec2.AssociateAddress", api_fault("AssociateAddress"))
    with pytest.raises(DockerMachineError, match="associate Elastic IP .*InternalError"):
        DRIVER.provision(host_props(moto))
    assert allocated, "no Elastic IP was allocated"
    assert allocated[0] not in moto.inventory()["elastic_ips"]
    assert moto.inventory() == before


def test_cleanup_failure_is_reported_with_the_cause(moto, driver_events):
    before = moto.inventory()
    groups = []
    driver_events(
        "after-call.ec2.CreateSecurityGroup",
        lambda parsed, **_: groups.append(parsed["GroupId"]),
    )
    driver_events(
        "before-call.ec2.DeleteSecurityGroup",
        api_fault("DeleteSecurityGroup", code="UnauthorizedOperation", status=403),
    )
    props = host_props(moto, iamInstanceProfile="no-such-profile")
    with pytest.raises(DockerMachineError) as raised:
        DRIVER.provision(props)
    message = str(raised.value)
    try:
        assert message.startswith("failed to run the instance")
        assert "no-such-profile" in message
        assert (
            "The cleanup after this failure did not remove everything; remove these "
            f"by hand:\n  delete security group {groups[0]}: failed to delete security "
            f"group {groups[0]}: UnauthorizedOperation"
        ) in message
        # The rest of the cleanup went on: only the group is left.
        assert moto.inventory()["security_groups"] - before["security_groups"] == {groups[0]}
        assert moto.inventory()["key_pairs"] == before["key_pairs"]
    finally:
        moto.client().delete_security_group(GroupId=groups[0])
    assert moto.inventory() == before


def test_delete_failure_is_reported_and_the_rest_removed(moto, driver_events):
    before = moto.inventory()
    outputs = provisioned(host_props(moto))
    details = outputs["details"]
    driver_events(
        "before-call.ec2.DeleteKeyPair",
        api_fault("DeleteKeyPair", code="UnauthorizedOperation", status=403),
    )
    with pytest.raises(DockerMachineError) as raised:
        DRIVER.delete(details["instance_id"], outputs)
    assert (
        f"could not remove everything of instance {details['instance_id']}:\n"
        f"  delete key pair {details['key_pair_created']}: failed to delete key pair"
    ) in str(raised.value)
    assert "run `pulumi destroy` again" in str(raised.value)
    left = moto.inventory()
    assert left["key_pairs"] - before["key_pairs"] == {details["key_pair_created"]}
    moto.client().delete_key_pair(KeyName=details["key_pair_created"])
    assert moto.inventory() == before


def test_read_shows_changed_address_as_drift(moto):
    outputs = provisioned(host_props(moto))
    details = outputs["details"]
    instance_id = details["instance_id"]
    ec2 = moto.client()
    other = ec2.allocate_address(Domain="vpc")
    try:
        # Someone moves another Elastic IP onto the instance.
        ec2.disassociate_address(AssociationId=details["association_id"])
        association = ec2.associate_address(
            AllocationId=other["AllocationId"], InstanceId=instance_id
        )["AssociationId"]
        read = DRIVER.read(instance_id, outputs)
        assert read["address"] == other["PublicIp"] != outputs["address"]
        assert read["connection"]["host"] == other["PublicIp"]
        assert read["connection"]["privateKey"] == outputs["ssh_private_key"]
        ec2.disassociate_address(AssociationId=association)
    finally:
        DRIVER.delete(instance_id, outputs)
        ec2.release_address(AllocationId=other["AllocationId"])


@pytest.mark.parametrize(
    "state, expected",
    [
        ("running", ["StopInstances", "ModifyInstanceAttribute", "StartInstances"]),
        ("stopped", ["ModifyInstanceAttribute"]),
    ],
)
def test_instance_type_change_stops_first(moto, state, expected):
    olds = provisioned(host_props(moto))
    instance_id = olds["details"]["instance_id"]
    try:
        if state == "stopped":
            olds = DRIVER.update(instance_id, olds, host_props(moto, state="stopped"))
        news = host_props(moto, state=state, instanceType="t3.large")
        actions = moto.recorded_actions(lambda: DRIVER.update(instance_id, olds, news))
        state_changes = ("StopInstances", "ModifyInstanceAttribute", "StartInstances")
        changes = [action for action in actions if action in state_changes]
        assert changes == expected
        instance = describe(moto, instance_id)
        assert instance["InstanceType"] == "t3.large"
        assert instance["State"]["Name"] == state
    finally:
        DRIVER.delete(instance_id, olds)
