"""The ``amazonec2`` driver: an EC2 instance made, tracked and removed through boto3.

Create checks what only the API can tell (the subnet, the key pair, the AMI,
an Elastic IP given by id) before it makes anything. Then it imports or
reuses a key pair and creates a security group open only to the listed
networks. It runs the instance (IMDSv2 required, encrypted root volume),
gives it an Elastic IP, and logs in once over SSH to record the host key.
When a step fails, everything made so far is removed again.

``details`` in the outputs records the ids and what this resource created;
delete removes exactly that, never what the user brought.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pulumi.dynamic import CheckFailure

from provider.drivers import Driver
from provider.drivers import ec2_settings as ec2s
from provider.drivers.common import generate_ssh_key, host_outputs, log_in
from provider.drivers.ec2_api import (
    EC2Error,
    Undo,
    call,
    call_unless_gone,
    client,
    delete_security_group,
    describe_instance,
    error_code,
    raise_with_cleanup,
    ssm_client,
    wait_for_state,
)
from provider.drivers.ec2_network import Placement, find_placement
from provider.errors import InvalidInputError
from provider.progress import report
from provider.resources.base import is_unknown

STOPPED_STATES = ("stopping", "stopped")
# EC2 rejects a RunInstances ClientToken longer than this.
MAX_CLIENT_TOKEN = 64
# After a RunInstances that failed without a response from EC2 (5xx, time-out),
# how often to look for an instance it launched all the same. DescribeInstances
# may list a new instance only seconds later, so the looks are 2, 4 and 8 s apart.
LAUNCH_LOOKS = 4
LAUNCH_LOOK_DELAY = 2.0


class AmazonEC2Driver(Driver):
    """Creates an EC2 instance for the Host and removes it on delete."""

    name = "amazonec2"
    options = ec2s.NAMES
    replace_on = ("driver",)
    replace_on_options = ec2s.REPLACE_ON

    def check(
        self, inputs: dict[str, Any], olds: dict[str, Any] | None = None
    ) -> list[CheckFailure]:
        options = inputs.get("options") or {}
        failures = [
            CheckFailure("options", str(error)) for error in ec2s.check_values(options)
        ]
        if inputs.get("address") is not None:
            failures.append(
                CheckFailure(
                    "address",
                    f"invalid address {inputs['address']!r}: the amazonec2 driver "
                    f"takes the address from the instance; remove address",
                )
            )
        if not is_unknown(options):
            has_key = inputs.get("ssh_private_key") is not None
            failures += [
                CheckFailure("options", str(error))
                for error in ec2s.check_combinations(options, has_key)
            ]
        return failures

    def replaces(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        old = ec2s.resolve(olds.get("options"))
        new = ec2s.resolve(news.get("options"))
        replaces = []
        if _input_changed("ssh_private_key", olds, news):
            # The instance trusts the public key of the key pair it was
            # launched with, and EC2 never changes it. So a new key pair alone
            # would lock the new key out, while a new instance trusts it.
            replaces.append("ssh_private_key")
        if any(old[name] != new[name] for name in self.replace_on_options):
            replaces.append("options")
        elif new["spot"] and old["instanceType"] != new["instanceType"]:
            # EC2 does not change the type of a spot instance, stopped or not.
            replaces.append("options")
        return replaces

    def changed_inputs(
        self, olds: dict[str, Any], news: dict[str, Any], keys: tuple[str, ...]
    ) -> list[str]:
        changes = []
        for key in keys:
            if _input_changed(key, olds, news):
                changes.append(key)
        return changes

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        settings = ec2s.resolve(props.get("options"))
        ec2 = client(settings)
        report(f"checking the subnet, key pair and AMI in {settings['region']}")
        plan = _plan(ec2, settings, props)

        undo = Undo()
        try:
            details, private_key = _provision(ec2, settings, props, plan, undo)
            outputs = _finish_create(ec2, settings, props, details, private_key)
        except BaseException as error:
            raise_with_cleanup(error, undo.run())
        return details["instance_id"], outputs

    def provision(self, props: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Run create up to its SSH login; return the details and the private key.

        The address is in ``details["address"]``. A failure removes what was made.
        """
        settings = ec2s.resolve(props.get("options"))
        ec2 = client(settings)
        plan = _plan(ec2, settings, props)
        undo = Undo()
        try:
            return _provision(ec2, settings, props, plan, undo)
        except BaseException as error:
            raise_with_cleanup(error, undo.run())
            raise

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> dict[str, Any]:
        old = ec2s.resolve(olds.get("options"))
        new = ec2s.resolve(news.get("options"))
        ec2 = client(new)
        details = dict(olds["details"])
        state = olds.get("state") or "running"
        target_state = news.get("state") or "running"

        if old["instanceType"] != new["instanceType"]:
            state = _change_instance_type(ec2, id_, state, new["instanceType"])

        _update_tags(ec2, id_, old, new, olds["machine_name"], news["machine_name"])

        if old["monitoring"] != new["monitoring"]:
            _set_monitoring(ec2, id_, new["monitoring"])

        if details.get("security_group_created"):
            _update_rules(ec2, details["security_group_created"], olds, news)

        address = olds["address"]
        if state != target_state:
            address = _set_state(ec2, id_, target_state, new, details) or address

        private_key = news.get("ssh_private_key") or olds["ssh_private_key"]
        details["instance_type"] = new["instanceType"]
        return _outputs(news, details, address, private_key, olds, target_state)

    def read(self, id_: str, props: dict[str, Any]) -> dict[str, Any] | None:
        settings = ec2s.resolve(props.get("options"))
        instance = describe_instance(client(settings), id_)
        if instance is None or instance["State"]["Name"] in ("shutting-down", "terminated"):
            report(f"instance {id_} is gone; removing the Host from the stack")
            return None
        outputs = dict(props)
        outputs["state"] = (
            "stopped" if instance["State"]["Name"] in STOPPED_STATES else "running"
        )
        observed = _address(instance, settings)
        if observed and observed != props.get("address"):
            outputs["address"] = observed
            outputs["connection"] = {**props["connection"], "host": observed}
        if instance["InstanceType"] != settings["instanceType"]:
            # Shown as a change of instanceType, which the next up reverts.
            options = dict(props.get("options") or {})
            options["instanceType"] = instance["InstanceType"]
            outputs["options"] = options
        return outputs

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        settings = ec2s.resolve(props.get("options"))
        ec2 = client(settings)
        details = props.get("details") or {}
        failures = []
        for description, step in _removal_steps(ec2, id_, details, settings["spot"]):
            try:
                step()
            except Exception as error:  # every failure is reported below
                failures.append(f"{description}: {error}")
        if failures:
            listing = "\n  ".join(failures)
            raise EC2Error(
                f"could not remove everything of instance {id_}:\n  {listing}\n"
                f"The Host stays in the stack; run `pulumi destroy` again once "
                f"the cause is fixed"
            )


def _input_changed(key: str, olds: dict[str, Any], news: dict[str, Any]) -> bool:
    if key == "address":
        return False  # an output of this driver, never an input
    if key == "options":
        return ec2s.resolve(olds.get("options")) != ec2s.resolve(news.get("options"))
    if key == "state":
        return (olds.get("state") or "running") != (news.get("state") or "running")
    if key == "ssh_private_key" and news.get(key) is None:
        # Unset keeps a key the driver generated; it replaces a key the user gave.
        generated = (olds.get("details") or {}).get("generated_key")
        return olds.get(key) is not None and not generated
    return olds.get(key) != news.get(key)


class _Plan(dict):
    """Facts create looks up before making anything: placement, AMI, Elastic IP."""


def _plan(ec2: Any, settings: dict[str, Any], props: dict[str, Any]) -> _Plan:
    plan = _Plan()
    plan["placement"] = find_placement(ec2, settings)
    plan["ami"], plan["root_device"] = _find_ami(ec2, settings)
    if settings["keyPairName"]:
        _require_key_pair(ec2, settings)
    if settings["elasticIpAllocationId"]:
        plan["elastic_ip"] = _find_allocation(ec2, settings)
    return plan


def _find_ami(ec2: Any, settings: dict[str, Any]) -> tuple[str, str]:
    ami = settings["ami"]
    if ami is None:
        parameter = settings["amiParameter"]
        reply = call(
            f"read the AMI id from SSM parameter {parameter}",
            ssm_client(settings).get_parameter,
            Name=parameter,
        )
        ami = reply["Parameter"]["Value"]
        report(f"using AMI {ami} from {parameter}")
    try:
        reply = call(f"describe AMI {ami}", ec2.describe_images, ImageIds=[ami])
    except EC2Error as error:
        if error_code(error.__cause__) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
            raise
        reply = {"Images": []}
    if not reply["Images"]:
        raise InvalidInputError(
            "amazonec2.ami",
            ami,
            f"no such AMI in {settings['region']}; AMI ids differ per region, so "
            f"give an AMI of this region or leave ami unset for the default",
        )
    return ami, reply["Images"][0].get("RootDeviceName") or "/dev/xvda"


def _require_key_pair(ec2: Any, settings: dict[str, Any]) -> None:
    name = settings["keyPairName"]
    try:
        call(f"describe key pair {name}", ec2.describe_key_pairs, KeyNames=[name])
    except EC2Error as error:
        if error_code(error.__cause__) != "InvalidKeyPair.NotFound":
            raise
        raise InvalidInputError(
            "amazonec2.keyPairName",
            name,
            f"no such key pair in {settings['region']}; import its public key "
            f"(`aws ec2 import-key-pair`) or remove keyPairName to have one generated",
        ) from None


def _find_allocation(ec2: Any, settings: dict[str, Any]) -> str:
    allocation_id = settings["elasticIpAllocationId"]
    try:
        reply = call(
            f"describe Elastic IP {allocation_id}",
            ec2.describe_addresses,
            AllocationIds=[allocation_id],
        )
    except EC2Error as error:
        if error_code(error.__cause__) not in ("InvalidAllocationID.NotFound",):
            raise
        reply = {"Addresses": []}
    if not reply["Addresses"]:
        raise InvalidInputError(
            "amazonec2.elasticIpAllocationId",
            allocation_id,
            f"no such Elastic IP in {settings['region']}; give the AllocationId "
            f"shown by `aws ec2 describe-addresses`",
        )
    address = reply["Addresses"][0]
    if address.get("AssociationId"):
        raise InvalidInputError(
            "amazonec2.elasticIpAllocationId",
            allocation_id,
            f"already associated ({address['AssociationId']}); give a free Elastic "
            f"IP, or disassociate it first",
        )
    return address["PublicIp"]


def _provision(
    ec2: Any,
    settings: dict[str, Any],
    props: dict[str, Any],
    plan: _Plan,
    undo: Undo,
) -> tuple[dict[str, Any], str]:
    """Make the key pair, security group, instance and Elastic IP."""
    machine = props["machine_name"]
    suffix = secrets.token_hex(4)
    placement: Placement = plan["placement"]
    details: dict[str, Any] = {
        "region": settings["region"],
        "vpc_id": placement.vpc_id,
        "subnet_id": placement.subnet_id,
        "availability_zone": placement.zone,
        "ami": plan["ami"],
        "instance_type": settings["instanceType"],
    }

    key_name, private_key = _key_pair(ec2, settings, props, f"{machine}-{suffix}", undo)
    details["key_pair_name"] = key_name
    details["key_pair_created"] = key_name if not settings["keyPairName"] else None
    details["generated_key"] = props.get("ssh_private_key") is None

    groups = settings["securityGroupIds"]
    details["security_group_created"] = None
    if not groups:
        group_id = _create_security_group(ec2, settings, props, placement, suffix, undo)
        details["security_group_created"] = group_id
        groups = [group_id]
    details["security_group_ids"] = list(groups)

    report(f"running a {settings['instanceType']} instance of {plan['ami']}")
    token = _client_token(machine)
    params = _run_params(settings, props, plan, key_name, groups, token)
    try:
        reply = call("run the instance", ec2.run_instances, **params)
    except BaseException as error:
        # botocore retried with the same token and gave up; one of its tries
        # may have launched an instance that no reply named.
        looks = LAUNCH_LOOKS if _launch_uncertain(error) else 1
        undo.push(
            f"terminate any instance launched with client token {token}",
            lambda: _terminate_launched(ec2, machine, token, looks),
        )
        raise
    launched = reply["Instances"][0]
    instance_id = launched["InstanceId"]
    details["instance_id"] = instance_id
    details["spot_request_id"] = launched.get("SpotInstanceRequestId")
    # Reads the spot request id when it runs: it may be known only after the wait.
    undo.push(
        f"terminate instance {instance_id}",
        lambda: _terminate(ec2, instance_id, details["spot_request_id"]),
    )

    instance = wait_for_state(ec2, instance_id, "running")
    if settings["spot"] and not details["spot_request_id"]:
        details["spot_request_id"] = instance.get("SpotInstanceRequestId")
    details["private_ip"] = instance.get("PrivateIpAddress")
    details["address"] = _address(instance, settings)

    if settings["elasticIp"]:
        _attach_elastic_ip(ec2, settings, plan, instance_id, details, undo)
    if not details["address"]:
        raise EC2Error(
            f"instance {instance_id} has no public address: its subnet "
            f"{placement.subnet_id} assigns none; keep elasticIp: true, or set "
            f"privateAddressOnly: true when this workstation reaches the VPC"
        )
    return details, private_key


def _key_pair(
    ec2: Any, settings: dict[str, Any], props: dict[str, Any], name: str, undo: Undo
) -> tuple[str, str]:
    private_key = props.get("ssh_private_key")
    if settings["keyPairName"]:
        report(f"using the existing key pair {settings['keyPairName']}")
        return settings["keyPairName"], private_key
    if private_key is None:
        private_key, public_key = generate_ssh_key(f"docker-machine {name}")
        report(f"generated an ed25519 SSH key; importing it as key pair {name}")
    else:
        import asyncssh  # here, so that check and diff do without it

        public_key = asyncssh.import_private_key(private_key).export_public_key().decode()
        report(f"importing the public half of the given SSH key as key pair {name}")
    name = f"docker-machine-{name}"
    call(
        f"import key pair {name}",
        ec2.import_key_pair,
        KeyName=name,
        PublicKeyMaterial=public_key.encode(),
        TagSpecifications=[_tags("key-pair", {"Name": name}, props)],
    )
    undo.push(f"delete key pair {name}", lambda: _delete_key_pair(ec2, name))
    return name, private_key


def _create_security_group(
    ec2: Any,
    settings: dict[str, Any],
    props: dict[str, Any],
    placement: Placement,
    suffix: str,
    undo: Undo,
) -> str:
    name = f"docker-machine-{props['machine_name']}-{suffix}"
    report(f"creating security group {name} in {placement.vpc_id}")
    reply = call(
        f"create security group {name}",
        ec2.create_security_group,
        GroupName=name,
        Description=f"SSH and Docker for docker-machine {props['machine_name']}",
        VpcId=placement.vpc_id,
        TagSpecifications=[_tags("security-group", {"Name": name}, props)],
    )
    group_id = reply["GroupId"]
    undo.push(
        f"delete security group {group_id}", lambda: delete_security_group(ec2, group_id)
    )
    rules = ec2s.security_group_rules(settings, int(props["ssh_port"]))
    call(
        f"open ports in security group {group_id}",
        ec2.authorize_security_group_ingress,
        GroupId=group_id,
        IpPermissions=ec2s.ip_permissions(rules),
    )
    return group_id


def _client_token(machine: str) -> str:
    """Return a RunInstances ClientToken of at most 64 characters, new per create.

    The random part keeps two creates of one machine name apart; the name,
    cut to fit, only helps a person read the token.
    """
    unique = secrets.token_hex(8)
    head = f"docker-machine-{machine}"[: MAX_CLIENT_TOKEN - len(unique) - 1]
    return f"{head}-{unique}"


def _run_params(
    settings: dict[str, Any],
    props: dict[str, Any],
    plan: _Plan,
    key_name: str,
    groups: list[str],
    token: str,
) -> dict[str, Any]:
    tags = ec2s.instance_tags(settings, props["machine_name"])
    ebs: dict[str, Any] = {
        "VolumeSize": int(settings["rootSize"]),
        "VolumeType": settings["volumeType"],
        "Encrypted": True,
        "DeleteOnTermination": True,
    }
    if settings["kmsKeyId"]:
        ebs["KmsKeyId"] = settings["kmsKeyId"]
    params: dict[str, Any] = {
        "ImageId": plan["ami"],
        "InstanceType": settings["instanceType"],
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": key_name,
        # The token makes a retried call return the first instance, not a second one.
        "ClientToken": token,
        "NetworkInterfaces": [
            {
                "DeviceIndex": 0,
                "SubnetId": plan["placement"].subnet_id,
                "Groups": groups,
                "AssociatePublicIpAddress": not settings["privateAddressOnly"],
            }
        ],
        "BlockDeviceMappings": [{"DeviceName": plan["root_device"], "Ebs": ebs}],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "Monitoring": {"Enabled": settings["monitoring"]},
        "EbsOptimized": settings["ebsOptimized"],
        "TagSpecifications": [
            _tags("instance", tags, props),
            _tags("volume", tags, props),
        ],
    }
    if settings["iamInstanceProfile"]:
        profile = settings["iamInstanceProfile"]
        key = "Arn" if profile.startswith("arn:") else "Name"
        params["IamInstanceProfile"] = {key: profile}
    if settings["userData"]:
        params["UserData"] = settings["userData"]
    if settings["spot"]:
        spot: dict[str, Any] = {
            # EC2 stops only a spot instance of a persistent request, so only a
            # persistent request (whose interruption then stops, never
            # terminates) keeps state: stopped working. A one-time request
            # would need no cancelling, but could not be stopped. The price of
            # persistence: terminating the instance would reopen the request
            # and launch another instance, so _terminate cancels the request
            # first, on delete and in the cleanup of a failed create.
            "SpotInstanceType": "persistent",
            "InstanceInterruptionBehavior": "stop",
        }
        if settings["spotPrice"]:
            spot["MaxPrice"] = str(settings["spotPrice"])
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
    return params


def _tags(kind: str, tags: dict[str, str], props: dict[str, Any]) -> dict[str, Any]:
    marked = {**tags, "docker-machine:machine": props["machine_name"]}
    return {
        "ResourceType": kind,
        "Tags": [{"Key": key, "Value": value} for key, value in marked.items()],
    }


def _attach_elastic_ip(
    ec2: Any,
    settings: dict[str, Any],
    plan: _Plan,
    instance_id: str,
    details: dict[str, Any],
    undo: Undo,
) -> None:
    allocation_id = settings["elasticIpAllocationId"]
    details["elastic_ip_created"] = None
    if allocation_id:
        public_ip = plan["elastic_ip"]
        report(f"using the existing Elastic IP {public_ip} ({allocation_id})")
    else:
        reply = call("allocate an Elastic IP", ec2.allocate_address, Domain="vpc")
        allocation_id, public_ip = reply["AllocationId"], reply["PublicIp"]
        details["elastic_ip_created"] = allocation_id
        report(f"allocated Elastic IP {public_ip} ({allocation_id})")
        undo.push(
            f"release Elastic IP {public_ip} ({allocation_id})",
            lambda: _release(ec2, allocation_id),
        )
    reply = call(
        f"associate Elastic IP {public_ip} with {instance_id}",
        ec2.associate_address,
        AllocationId=allocation_id,
        InstanceId=instance_id,
    )
    association_id = reply.get("AssociationId")
    undo.push(
        f"disassociate Elastic IP {public_ip}",
        lambda: _disassociate(ec2, association_id, public_ip),
    )
    details["allocation_id"] = allocation_id
    details["association_id"] = association_id
    details["elastic_ip"] = public_ip
    details["address"] = public_ip


def _finish_create(
    ec2: Any,
    settings: dict[str, Any],
    props: dict[str, Any],
    details: dict[str, Any],
    private_key: str,
) -> dict[str, Any]:
    """Log in once to record the host key, then stop the instance if asked."""
    address = details.pop("address")
    port = int(props["ssh_port"])
    host_key, os_name = log_in(
        address,
        port,
        props["ssh_user"],
        private_key,
        props.get("pinned_host_key"),
        deadline_seconds=float(settings["sshTimeout"]),
        deadline_setting="amazonec2.sshTimeout",
    )
    state = props.get("state") or "running"
    if state == "stopped":
        _stop(ec2, details["instance_id"])
    return host_outputs(
        props,
        address=address,
        ssh_port=port,
        ssh_private_key=private_key,
        host_key=host_key,
        os_name=os_name,
        state=state,
        details=details,
    )


def _outputs(
    news: dict[str, Any],
    details: dict[str, Any],
    address: str,
    private_key: str,
    olds: dict[str, Any],
    state: str,
) -> dict[str, Any]:
    return host_outputs(
        news,
        address=address,
        ssh_port=int(news["ssh_port"]),
        ssh_private_key=private_key,
        host_key=olds["host_key"],
        os_name=olds["os"],
        state=state,
        details=details,
    )


def _address(instance: dict[str, Any], settings: dict[str, Any]) -> str | None:
    if settings["privateAddressOnly"]:
        return instance.get("PrivateIpAddress")
    return instance.get("PublicIpAddress")


def _stop(ec2: Any, instance_id: str) -> None:
    report(f"stopping instance {instance_id}")
    call(f"stop instance {instance_id}", ec2.stop_instances, InstanceIds=[instance_id])
    wait_for_state(ec2, instance_id, "stopped")


def _start(ec2: Any, instance_id: str) -> dict[str, Any]:
    report(f"starting instance {instance_id}")
    call(f"start instance {instance_id}", ec2.start_instances, InstanceIds=[instance_id])
    return wait_for_state(ec2, instance_id, "running")


def _set_state(
    ec2: Any, instance_id: str, target_state: str, settings: dict[str, Any], details: dict
) -> str | None:
    """Start or stop the instance; return its address after a start."""
    if target_state == "stopped":
        _stop(ec2, instance_id)
        return None
    instance = _start(ec2, instance_id)
    address = _address(instance, settings)
    elastic_ip = details.get("elastic_ip")
    if elastic_ip and address != elastic_ip:
        # EC2 keeps the association over stop and start; re-associate if it
        # was lost, so that the address and the server certificate stay valid.
        report(f"re-associating Elastic IP {elastic_ip} with {instance_id}")
        reply = call(
            f"associate Elastic IP {elastic_ip} with {instance_id}",
            ec2.associate_address,
            AllocationId=details["allocation_id"],
            InstanceId=instance_id,
        )
        details["association_id"] = reply.get("AssociationId")
        address = elastic_ip
    return address


def _change_instance_type(ec2: Any, instance_id: str, state: str, new_type: str) -> str:
    """Stop the instance if it runs, then set its type; return its state."""
    if state == "running":
        _stop(ec2, instance_id)
    report(f"changing the type of instance {instance_id} to {new_type}")
    call(
        f"change the type of instance {instance_id} to {new_type}",
        ec2.modify_instance_attribute,
        InstanceId=instance_id,
        InstanceType={"Value": new_type},
    )
    return "stopped"


def _update_tags(
    ec2: Any,
    instance_id: str,
    old: dict[str, Any],
    new: dict[str, Any],
    old_name: str,
    new_name: str,
) -> None:
    before = ec2s.instance_tags(old, old_name)
    after = ec2s.instance_tags(new, new_name)
    removed = sorted(set(before) - set(after))
    changed = {key: value for key, value in after.items() if before.get(key) != value}
    if removed:
        call(
            f"remove tags {removed} from {instance_id}",
            ec2.delete_tags,
            Resources=[instance_id],
            Tags=[{"Key": key} for key in removed],
        )
    if changed:
        call(
            f"set tags {sorted(changed)} on {instance_id}",
            ec2.create_tags,
            Resources=[instance_id],
            Tags=[{"Key": key, "Value": value} for key, value in changed.items()],
        )


def _set_monitoring(ec2: Any, instance_id: str, enabled: bool) -> None:
    function = ec2.monitor_instances if enabled else ec2.unmonitor_instances
    verb = "enable" if enabled else "disable"
    call(f"{verb} monitoring of {instance_id}", function, InstanceIds=[instance_id])


def _update_rules(
    ec2: Any, group_id: str, olds: dict[str, Any], news: dict[str, Any]
) -> None:
    before = ec2s.security_group_rules(
        ec2s.resolve(olds.get("options")), int(olds["ssh_port"])
    )
    after = ec2s.security_group_rules(
        ec2s.resolve(news.get("options")), int(news["ssh_port"])
    )
    if after - before:
        report(f"opening {len(after - before)} rule(s) in security group {group_id}")
        call(
            f"open ports in security group {group_id}",
            ec2.authorize_security_group_ingress,
            GroupId=group_id,
            IpPermissions=ec2s.ip_permissions(after - before),
        )
    if before - after:
        report(f"closing {len(before - after)} rule(s) in security group {group_id}")
        call(
            f"close ports in security group {group_id}",
            ec2.revoke_security_group_ingress,
            GroupId=group_id,
            IpPermissions=ec2s.ip_permissions(before - after),
        )


def _terminate(ec2: Any, instance_id: str, spot_request_id: str | None = None) -> None:
    """Terminate an instance, cancelling its spot request first.

    A persistent spot request that is still open launches a new instance once
    its instance is gone. So when the cancel fails, the instance is left as it
    is and the failure is raised, for the next try to cancel and terminate.
    """
    if spot_request_id:
        report(f"cancelling spot request {spot_request_id} of instance {instance_id}")
        call_unless_gone(
            f"cancel spot request {spot_request_id}",
            ec2.cancel_spot_instance_requests,
            SpotInstanceRequestIds=[spot_request_id],
        )
    report(f"terminating instance {instance_id}")
    if call_unless_gone(
        f"terminate instance {instance_id}",
        ec2.terminate_instances,
        InstanceIds=[instance_id],
    ):
        wait_for_state(ec2, instance_id, "terminated")


def _release(ec2: Any, allocation_id: str) -> None:
    call_unless_gone(
        f"release Elastic IP {allocation_id}",
        ec2.release_address,
        AllocationId=allocation_id,
    )


def _disassociate(ec2: Any, association_id: str, public_ip: str) -> None:
    call_unless_gone(
        f"disassociate Elastic IP {public_ip}",
        ec2.disassociate_address,
        AssociationId=association_id,
    )


def _delete_key_pair(ec2: Any, name: str) -> None:
    call_unless_gone(f"delete key pair {name}", ec2.delete_key_pair, KeyName=name)


def _launch_uncertain(error: BaseException) -> bool:
    """Tell whether a failed RunInstances may have launched an instance.

    A 4xx response means EC2 rejected the request. Anything else (a 5xx
    response, a time-out, a lost connection, an interrupt) leaves it open.
    """
    import botocore.exceptions

    cause = error.__cause__ if isinstance(error, EC2Error) else error
    if isinstance(cause, botocore.exceptions.ClientError):
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
        return status >= 500
    return True


def _find_launched(ec2: Any, machine: str, token: str, looks: int) -> list[dict[str, Any]]:
    """Return the live instances launched with ``token``, looking up to ``looks`` times.

    The instance carries the machine tag from its launch on (TagSpecifications),
    so the tag narrows the search and the ClientToken picks the instance. (EC2
    has a client-token filter too, but moto, which the tests run against,
    does not.)
    """
    delay = LAUNCH_LOOK_DELAY
    for look in range(1, looks + 1):
        reply = call(
            f"look for an instance launched with client token {token}",
            ec2.describe_instances,
            Filters=[
                {"Name": "tag:docker-machine:machine", "Values": [machine]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ],
        )
        found = [
            instance
            for reservation in reply.get("Reservations", [])
            for instance in reservation.get("Instances", [])
            if instance.get("ClientToken") == token
        ]
        if found or look == looks:
            return found
        report(
            f"no instance with client token {token} is listed (look {look} of "
            f"{looks}); looking again in {delay:.0f} s"
        )
        time.sleep(delay)
        delay *= 2
    return []


def _terminate_launched(ec2: Any, machine: str, token: str, looks: int) -> None:
    """Terminate any instance that a failed RunInstances launched after all."""
    try:
        found = _find_launched(ec2, machine, token, looks)
    except EC2Error as error:
        raise EC2Error(
            f"{error}; look for it with `aws ec2 describe-instances --filters "
            f"Name=client-token,Values={token}`"
        ) from error
    if not found:
        report(f"no instance was launched with client token {token}")
    for instance in found:
        _terminate(ec2, instance["InstanceId"], instance.get("SpotInstanceRequestId"))


def _spot_request_of(ec2: Any, instance_id: str) -> str | None:
    """Return the spot request of an instance, None if it has none or is gone."""
    instance = describe_instance(ec2, instance_id)
    return (instance or {}).get("SpotInstanceRequestId")


def _removal_steps(
    ec2: Any, instance_id: str, details: dict[str, Any], spot: bool = False
) -> list:
    """Return (description, step) pairs that remove what create made."""
    steps = []
    association = details.get("association_id")
    if association:
        public_ip = details.get("elastic_ip")
        steps.append(
            (
                f"disassociate Elastic IP {public_ip}",
                lambda: _disassociate(ec2, association, public_ip),
            )
        )

    def terminate() -> None:
        # A state written before the driver recorded spot requests has no
        # spot_request_id: ask EC2.
        request = details.get("spot_request_id")
        if request is None and spot:
            request = _spot_request_of(ec2, instance_id)
        _terminate(ec2, instance_id, request)

    steps.append((f"terminate instance {instance_id}", terminate))
    if details.get("elastic_ip_created"):
        allocation = details["elastic_ip_created"]
        steps.append(
            (f"release Elastic IP {allocation}", lambda: _release(ec2, allocation))
        )
    if details.get("security_group_created"):
        group = details["security_group_created"]
        steps.append(
            (
                f"delete security group {group}",
                lambda: delete_security_group(ec2, group),
            )
        )
    if details.get("key_pair_created"):
        key = details["key_pair_created"]
        steps.append((f"delete key pair {key}", lambda: _delete_key_pair(ec2, key)))
    return steps


DRIVER = AmazonEC2Driver()
