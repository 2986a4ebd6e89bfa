"""Settings of the ``amazonec2`` driver: names, defaults and checks.

Everything here is pure: :func:`check_settings` validates the ``options``
mapping of a Host without any API call, and :func:`resolve` fills in the
defaults. The names are the ones a user writes in the stack configuration.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

import botocore.session

from provider.errors import InvalidInputError
from provider.resources.base import is_unknown

# Canonical publishes the current Ubuntu 24.04 LTS AMI of every region under
# this public SSM parameter; Ubuntu's login user is "ubuntu".
DEFAULT_AMI_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
)
DEFAULTS: dict[str, Any] = {
    "region": "us-east-1",
    "zone": "a",
    "ami": None,
    "amiParameter": DEFAULT_AMI_PARAMETER,
    "instanceType": "t3.micro",
    "vpcId": None,
    "subnetId": None,
    "rootSize": 16,
    "volumeType": "gp3",
    "kmsKeyId": None,
    "iamInstanceProfile": None,
    "tags": {},
    "userData": None,
    "spot": False,
    "spotPrice": None,
    "privateAddressOnly": False,
    "monitoring": False,
    "ebsOptimized": False,
    "endpointUrl": None,
    "profile": None,
    "retryMode": "standard",
    "allowedCidrs": [],
    "extraPorts": [],
    "enginePort": 2376,
    "securityGroupIds": [],
    "keyPairName": None,
    "elasticIp": True,
    "elasticIpAllocationId": None,
    "sshTimeout": 300,
}
NAMES = frozenset(DEFAULTS)

# Changed in place by update; a change of any other setting replaces the instance.
IN_PLACE = frozenset(
    {
        "tags",
        "instanceType",
        "monitoring",
        "allowedCidrs",
        "extraPorts",
        "enginePort",
        "endpointUrl",
        "profile",
        "retryMode",
        "sshTimeout",
    }
)
REPLACE_ON = tuple(sorted(NAMES - IN_PLACE))

VOLUME_TYPES = ("gp2", "gp3", "io1", "io2", "st1", "sc1", "standard")
RETRY_MODES = ("standard", "adaptive")
MAX_USER_DATA_BYTES = 16 * 1024
MAX_ROOT_SIZE_GIB = 16384
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
# Tags with this prefix mark what the driver made (see amazonec2._tags).
DRIVER_TAG_PREFIX = "docker-machine:"

_ZONE = re.compile(r"[a-z]")
_AMI = re.compile(r"ami-([0-9a-f]{8}|[0-9a-f]{17})")
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")
_RESOURCE_ID = r"{}-([0-9a-f]{{8}}|[0-9a-f]{{17}})"
_PORT_SPEC = re.compile(r"(?P<port>\d{1,5})(/(?P<protocol>tcp|udp))?")


@dataclass(frozen=True)
class Rule:
    """One ingress rule of the security group the driver creates."""

    protocol: str
    port: int
    cidr: str


def _fail(name: str, value: Any, reason: str) -> InvalidInputError:
    return InvalidInputError(f"amazonec2.{name}", value, reason)


@functools.cache
def known_regions() -> frozenset[str]:
    """Return the EC2 regions of every partition botocore describes.

    Made once per process: a botocore session loads its data files, which
    takes a noticeable time on every check of every Host otherwise.
    """
    session = botocore.session.get_session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition))
    return frozenset(regions)


def resolve(options: dict[str, Any] | None) -> dict[str, Any]:
    """Return ``options`` with every default filled in."""
    settings = {**DEFAULTS, **(options or {})}
    if settings["privateAddressOnly"] and "elasticIp" not in (options or {}):
        settings["elasticIp"] = False
    return settings


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, value, "must be true or false, unquoted in YAML")
    return value


def _check_text(name: str, value: Any, fix: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, value, f"must be a non-empty string; {fix}")
    return value


def _check_pattern(
    name: str, value: Any, pattern: re.Pattern, example: str, hint: str = ""
) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise _fail(name, value, f"malformed; give a value such as {example!r}{hint}")
    return value


def _resource_id(prefix: str) -> re.Pattern:
    return re.compile(_RESOURCE_ID.format(prefix))


def _whole(name: str, value: Any, low: int, high: int, what: str) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or not low <= value <= high:
        raise _fail(name, value, f"must be {what} from {low} to {high}")
    return int(value)


def check_region(value: Any) -> str:
    """Validate a region name against botocore's list of EC2 regions."""
    if not isinstance(value, str) or value not in known_regions():
        raise _fail(
            "region",
            value,
            "not an EC2 region botocore knows; give a region such as 'us-east-1' "
            "or 'eu-west-1'",
        )
    return value


def check_cidrs(value: Any) -> list[str]:
    """Validate a list of IPv4 or IPv6 networks in CIDR notation."""
    if not isinstance(value, list):
        raise _fail("allowedCidrs", value, "must be a list such as ['203.0.113.7/32']")
    cidrs = []
    for item in value:
        try:
            cidrs.append(str(ipaddress.ip_network(item, strict=True)))
        except (TypeError, ValueError):
            raise _fail(
                "allowedCidrs",
                item,
                "not a network in CIDR notation with the host bits zero; give "
                "e.g. '203.0.113.7/32' for one address",
            ) from None
    return cidrs


def check_ports(value: Any) -> list[str]:
    """Validate extra ports: numbers, or 'PORT/tcp' and 'PORT/udp'."""
    if not isinstance(value, list):
        raise _fail("extraPorts", value, "must be a list such as [80, '53/udp']")
    ports = []
    for item in value:
        text = item
        if isinstance(item, bool):
            text = None  # YAML true is not port 1
        elif isinstance(item, int):
            text = str(item)
        elif isinstance(item, float):
            # Numbers cross the engine as doubles: 80.0 is port 80, but 80.7,
            # NaN and infinity are no port.
            text = str(int(item)) if item.is_integer() else None
        match = _PORT_SPEC.fullmatch(text) if isinstance(text, str) else None
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise _fail(
                "extraPorts",
                item,
                "must be a port from 1 to 65535, optionally with '/tcp' or '/udp'",
            )
        ports.append(f"{int(match['port'])}/{match['protocol'] or 'tcp'}")
    return ports


def check_tags(value: Any) -> dict[str, str]:
    """Validate a mapping of tag keys to string values."""
    if not isinstance(value, dict):
        raise _fail("tags", value, "must be a mapping of tag keys to values, e.g. {team: web}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or key.lower().startswith("aws:"):
            raise _fail("tags", key, "tag keys must be non-empty and not start with 'aws:'")
        if len(key) > MAX_TAG_KEY or key.startswith(DRIVER_TAG_PREFIX):
            raise _fail(
                "tags",
                key,
                f"tag keys have at most {MAX_TAG_KEY} characters and must not "
                f"start with {DRIVER_TAG_PREFIX!r}, which the driver sets; "
                f"rename the key",
            )
        if not isinstance(item, str):
            raise _fail(f"tags.{key}", item, "tag values must be strings; quote the value")
        if len(item) > MAX_TAG_VALUE:
            raise _fail(
                f"tags.{key}",
                f"<{len(item)} characters>",
                f"tag values have at most {MAX_TAG_VALUE} characters; shorten it",
            )
        if key == "Name" and not item.strip():
            # An empty Name hides the instance's machine name in the console
            # and in `aws ec2 describe-instances` output.
            raise _fail(
                "tags.Name",
                item,
                "an empty Name hides the machine in the EC2 console; give a name, "
                "or remove the Name tag to have the machine name",
            )
    return value


def check_spot_price(value: Any) -> str:
    """Validate a maximum spot price in US dollars per hour."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        price = -1.0
    # float() accepts 'nan' and 'inf', which EC2 does not.
    if isinstance(value, bool) or not math.isfinite(price) or price <= 0:
        raise _fail(
            "spotPrice",
            value,
            "must be a price in USD per hour, e.g. '0.02'; remove spotPrice to "
            "pay the current spot price",
        )
    return str(value)


def check_endpoint_url(value: Any) -> str:
    """Validate an http or https URL for the EC2 API."""
    try:
        parsed = urllib.parse.urlparse(value) if isinstance(value, str) else None
    except ValueError:  # e.g. an unclosed '[' of an IPv6 address
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise _fail(
            "endpointUrl",
            value,
            "must be an http:// or https:// URL such as "
            "'https://ec2.eu-west-1.amazonaws.com'; remove endpointUrl for AWS",
        )
    return value


def check_user_data(value: Any) -> str:
    """Validate user data: text of at most 16 KiB."""
    if not isinstance(value, str):
        raise _fail("userData", value, "must be text, e.g. a cloud-init document")
    if len(value.encode()) > MAX_USER_DATA_BYTES:
        raise _fail(
            "userData",
            f"<{len(value.encode())} bytes>",
            "EC2 accepts at most 16 KiB; compress it (cloud-init reads gzip) or "
            "fetch the rest from the instance",
        )
    return value


def _check_id_list(name: str, value: Any, prefix: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _fail(
            name,
            value,
            f"must be a non-empty list such as ['{prefix}-0123abcd']; remove "
            f"{name} to let the driver create a group",
        )
    return [_check_pattern(name, item, _resource_id(prefix), f"{prefix}-0123abcd") for item in value]


CHECKS: dict[str, Callable[[Any], Any]] = {
    "region": check_region,
    "zone": lambda v: _check_pattern(
        "zone", v, _ZONE, "a", "; give only the letter, the region comes from region"
    ),
    "ami": lambda v: _check_pattern("ami", v, _AMI, "ami-0123456789abcdef0"),
    "amiParameter": lambda v: _check_text(
        "amiParameter", v, "give the name of an SSM parameter that holds an AMI id"
    ),
    "instanceType": lambda v: _check_pattern("instanceType", v, _INSTANCE_TYPE, "t3.micro"),
    "vpcId": lambda v: _check_pattern(
        "vpcId", v, _resource_id("vpc"), "vpc-0123abcd", ", or remove vpcId for the default VPC"
    ),
    "subnetId": lambda v: _check_pattern(
        "subnetId", v, _resource_id("subnet"), "subnet-0123abcd"
    ),
    "rootSize": lambda v: _whole("rootSize", v, 1, MAX_ROOT_SIZE_GIB, "a whole number of GiB"),
    "volumeType": lambda v: _check_choice("volumeType", v, VOLUME_TYPES),
    "kmsKeyId": lambda v: _check_text("kmsKeyId", v, "give a KMS key id, alias or ARN"),
    "iamInstanceProfile": lambda v: _check_text(
        "iamInstanceProfile", v, "give the name of an IAM instance profile"
    ),
    "tags": check_tags,
    "userData": check_user_data,
    "spot": lambda v: _check_bool("spot", v),
    "spotPrice": check_spot_price,
    "privateAddressOnly": lambda v: _check_bool("privateAddressOnly", v),
    "monitoring": lambda v: _check_bool("monitoring", v),
    "ebsOptimized": lambda v: _check_bool("ebsOptimized", v),
    "endpointUrl": check_endpoint_url,
    "profile": lambda v: _check_text("profile", v, "give a profile of ~/.aws/config"),
    "retryMode": lambda v: _check_choice("retryMode", v, RETRY_MODES),
    "allowedCidrs": check_cidrs,
    "extraPorts": check_ports,
    "enginePort": lambda v: _whole("enginePort", v, 1, 65535, "a port number"),
    "securityGroupIds": lambda v: _check_id_list("securityGroupIds", v, "sg"),
    "keyPairName": lambda v: _check_text(
        "keyPairName", v, "give the name of a key pair of the region"
    ),
    "elasticIp": lambda v: _check_bool("elasticIp", v),
    "elasticIpAllocationId": lambda v: _check_pattern(
        "elasticIpAllocationId",
        v,
        _resource_id("eipalloc"),
        "eipalloc-0123abcd",
        ": the AllocationId that `aws ec2 describe-addresses` shows, not the address",
    ),
    "sshTimeout": lambda v: _whole("sshTimeout", v, 1, 3600, "a whole number of seconds"),
}


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(name, value, f"use one of: {', '.join(choices)}")
    return value


def check_values(options: dict[str, Any]) -> list[InvalidInputError]:
    """Check each setting given on its own; return every failure."""
    failures = []
    for name, value in options.items():
        if value is None or is_unknown(value) or name not in CHECKS:
            continue
        try:
            CHECKS[name](value)
        except InvalidInputError as error:
            failures.append(error)
    return failures


def check_combinations(
    options: dict[str, Any], has_private_key: bool
) -> list[InvalidInputError]:
    """Check the settings that depend on each other.

    A value not known yet (at preview) counts as given and passes.
    """
    given = {name for name, value in options.items() if value is not None}
    if any(is_unknown(value) for value in options.values()):
        return []
    settings = resolve(options)
    failures = []
    if "spotPrice" in given and not settings["spot"]:
        failures.append(
            _fail("spotPrice", options["spotPrice"], "set only with spot: true; add spot: true or remove spotPrice")
        )
    if "securityGroupIds" in given and "allowedCidrs" in given:
        failures.append(
            _fail(
                "allowedCidrs",
                options["allowedCidrs"],
                "the rules of existing security groups (securityGroupIds) are left "
                "as they are; remove allowedCidrs, or remove securityGroupIds to let "
                "the driver create a group",
            )
        )
    if "securityGroupIds" not in given and not settings["allowedCidrs"]:
        failures.append(
            _fail(
                "allowedCidrs",
                options.get("allowedCidrs"),
                "missing; list the networks allowed to reach SSH and the Docker port, "
                "e.g. ['203.0.113.7/32'] for your workstation's public address "
                "(nothing is opened to 0.0.0.0/0 unless listed)",
            )
        )
    if "elasticIpAllocationId" in given and options.get("elasticIp") is False:
        failures.append(
            _fail(
                "elasticIpAllocationId",
                options["elasticIpAllocationId"],
                "given with elasticIp: false; remove one of the two",
            )
        )
    if settings["privateAddressOnly"] and "elasticIpAllocationId" in given:
        failures.append(
            _fail(
                "elasticIpAllocationId",
                options["elasticIpAllocationId"],
                "an Elastic IP is a public address, but privateAddressOnly is true; "
                "remove elasticIpAllocationId or privateAddressOnly",
            )
        )
    elif settings["privateAddressOnly"] and options.get("elasticIp") is True:
        failures.append(
            _fail(
                "elasticIp",
                True,
                "an Elastic IP is a public address, but privateAddressOnly is true; "
                "remove one of the two",
            )
        )
    if "keyPairName" in given and not has_private_key:
        failures.append(
            _fail(
                "keyPairName",
                options["keyPairName"],
                "an existing key pair needs its private key; set sshPrivateKeyFile "
                "(the Host input ssh_private_key), or remove keyPairName to have a "
                "key generated",
            )
        )
    return failures


def security_group_rules(settings: dict[str, Any], ssh_port: int) -> set[Rule]:
    """Return the ingress rules the created security group must have."""
    ports = [f"{ssh_port}/tcp", f"{int(settings['enginePort'])}/tcp"]
    ports += check_ports(settings["extraPorts"])
    rules = set()
    for spec in ports:
        port, protocol = spec.split("/")
        for cidr in check_cidrs(settings["allowedCidrs"]):
            rules.add(Rule(protocol, int(port), cidr))
    return rules


def ip_permissions(rules: set[Rule]) -> list[dict[str, Any]]:
    """Return ``rules`` in the shape of the EC2 ``IpPermissions`` parameter."""
    permissions = []
    for rule in sorted(rules, key=lambda r: (r.protocol, r.port, r.cidr)):
        ranges_key, cidr_key = (
            ("Ipv6Ranges", "CidrIpv6") if ":" in rule.cidr else ("IpRanges", "CidrIp")
        )
        permissions.append(
            {
                "IpProtocol": rule.protocol,
                "FromPort": rule.port,
                "ToPort": rule.port,
                ranges_key: [{cidr_key: rule.cidr}],
            }
        )
    return permissions


def instance_tags(settings: dict[str, Any], machine_name: str) -> dict[str, str]:
    """Return the instance's tags: the user's, with ``Name`` defaulting to the machine."""
    return {"Name": machine_name, **settings["tags"]}
