"""Placement of a new EC2 instance: its VPC, subnet and availability zone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provider.drivers.ec2_api import EC2Error, call, error_code
from provider.errors import InvalidInputError


@dataclass(frozen=True)
class Placement:
    """The VPC, subnet and availability zone of a new instance."""

    vpc_id: str
    subnet_id: str
    zone: str


def find_placement(ec2: Any, settings: dict[str, Any]) -> Placement:
    """Resolve the subnet and VPC from the settings, checking that they match.

    Without ``subnetId`` the subnet is the default one of the zone in the
    VPC (the region's default VPC when ``vpcId`` is not given either).
    """
    if settings["subnetId"]:
        return _given_subnet(ec2, settings)
    vpc_id = settings["vpcId"] or _default_vpc(ec2, settings["region"])
    zone = settings["region"] + settings["zone"]
    reply = call(
        f"list the subnets of {vpc_id} in {zone}",
        ec2.describe_subnets,
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "availability-zone", "Values": [zone]},
        ],
    )
    subnets = sorted(
        reply["Subnets"], key=lambda s: (not s.get("DefaultForAz"), s["SubnetId"])
    )
    if not subnets:
        raise InvalidInputError(
            "amazonec2.zone",
            settings["zone"],
            f"VPC {vpc_id} has no subnet in {zone}; choose another zone letter, "
            f"or give subnetId",
        )
    return Placement(vpc_id, subnets[0]["SubnetId"], zone)


def _given_subnet(ec2: Any, settings: dict[str, Any]) -> Placement:
    subnet_id = settings["subnetId"]
    try:
        reply = call(
            f"describe subnet {subnet_id}", ec2.describe_subnets, SubnetIds=[subnet_id]
        )
    except EC2Error as error:
        if error_code(error.__cause__) != "InvalidSubnetID.NotFound":
            raise
        reply = {"Subnets": []}
    if not reply["Subnets"]:
        raise InvalidInputError(
            "amazonec2.subnetId",
            subnet_id,
            f"no such subnet in {settings['region']}; give a subnet of this region "
            f"(`aws ec2 describe-subnets`)",
        )
    subnet = reply["Subnets"][0]
    vpc_id = settings["vpcId"]
    if vpc_id and subnet["VpcId"] != vpc_id:
        raise InvalidInputError(
            "amazonec2.subnetId",
            subnet_id,
            f"the subnet belongs to {subnet['VpcId']}, not to vpcId {vpc_id}; give a "
            f"subnet of {vpc_id}, or remove vpcId",
        )
    return Placement(subnet["VpcId"], subnet_id, subnet["AvailabilityZone"])


def _default_vpc(ec2: Any, region: str) -> str:
    reply = call(
        f"find the default VPC of {region}",
        ec2.describe_vpcs,
        Filters=[{"Name": "is-default", "Values": ["true"]}],
    )
    if not reply["Vpcs"]:
        raise InvalidInputError(
            "amazonec2.vpcId",
            None,
            f"missing: {region} has no default VPC; give vpcId and subnetId",
        )
    return reply["Vpcs"][0]["VpcId"]
