"""The field tables of every JSON request body dockerd decodes that the gateway lets through.

The gateway's canonical request model (``canonical.py``) parses a body the way Go's encoding/json
does, refuses any key that is not in these tables, any key spelled other than the canonical
spelling (Go would match keys case-insensitively), and any duplicate, then re-serialises what it
checked. A field missing here breaks a legitimate client; a field too many is an unchecked hole.

Derived by hand (nothing copied) from the moby/moby repository:

- The daemon here is dockerd 20.10.24 (API 1.41, ``docker version`` reports git commit 5d6db84):
  tag ``v20.10.24`` = commit 5d6db842238e3c4f5f9fb9ad70ea46b35227d084. The structs it decodes into:
  ``api/types/container/config.go`` (Config, HealthConfig), ``api/types/container/host_config.go``
  (HostConfig, Resources, UpdateConfig, RestartPolicy, LogConfig, DeviceMapping, DeviceRequest),
  ``api/types/mount/mount.go``, ``api/types/network/network.go`` (EndpointSettings, IPAM,
  NetworkingConfig, ConfigReference), ``api/types/configs.go`` (ExecConfig), ``api/types/types.go``
  (NetworkCreate/NetworkCreateRequest, NetworkConnect, NetworkDisconnect, ExecStartCheck),
  ``api/types/volume/volume_create.go``, ``api/types/blkiodev/blkio.go``, ``api/types/auth.go``,
  ``api/types/strslice/strslice.go``, ``runconfig/config_unix.go`` (ContainerConfigWrapper) and
  ``runconfig/config.go``/``hostconfig.go`` (decodeContainerConfig, getHostConfig), vendored
  ``github.com/docker/go-units/ulimit.go`` and ``github.com/docker/go-connections/nat/nat.go``;
  which struct each POST route decodes: ``api/server/router/{container,network,volume,system,image}/``.
- Fields clients may send that came after 1.41: the same files at the release tags v23.0.0 (1.42),
  v24.0.0 (1.43), v25.0.0 (1.44), v26.0.0 (1.45), v27.0.1 (1.46), v27.2.0 (1.47), v28.0.0 (1.48),
  v28.1.0 (1.49), v28.2.0 (1.50), v28.3.0 (1.51), and master at commit
  b985e2313a8676e18072b442911fc8f64f17d440 (``api/swagger.yaml`` version 1.56,
  ``api/docs/CHANGELOG.md``; HealthcheckConfig from vendored ``moby/docker-image-spec``). ``SINCE``
  records the API version of the first release whose struct has the field; dockerd 20.10 ignores
  those fields (Go drops unknown keys), so accepting them costs nothing and keeps new clients working.
- Fields later removed from moby (Config.MacAddress, Resources.KernelMemory/KernelMemoryTCP,
  ExecConfig.Detach, NetworkCreate.CheckDuplicate) stay: dockerd 20.10 still decodes them.
- Fields that the 20.10 struct already has but swagger only documented later (HostConfig.ConsoleSize,
  documented 1.42; EndpointSettings.MacAddress/DriverOpts as request fields, 1.44/1.46) are
  decoded by this daemon, so they are not in ``SINCE``.

Go pointers are written ``*T`` whatever T is (``*HostConfig``, ``*int``, ``*bool``, ``*[2]uint``):
null sets them to nil, "unset". encoding/json also accepts null for a field that is not a pointer
(it leaves the field as it was, the same as an absent key), and real clients send it: the docker
CLIs send "MemorySwappiness": null, the docker SDK "Healthcheck": {"Timeout": null} and
"IPRange": null, the 20.10 CLI a commit body of null (see tests/fixtures/gateway/client-bodies).
Integer widths narrower than 64 bits are noted in comments (Go refuses out-of-range values with 400).
"""

from __future__ import annotations

# A type is a string:
#   "string" "bool" "int" (signed, int64 range) "uint" (unsigned, uint64 range) "float"
#   "strslice"        Go strslice.StrSlice: a JSON string or a list of strings
#   "set"             map[string]struct{}: an object whose values are all {}
#   "[]T"             list of T (e.g. "[]string", "[]Mount", "[][]string")
#   "map[T]"          object with free string keys and values of T (e.g. "map[string]", "map[[]PortBinding]",
#                     "map[*EndpointSettings]")
#   "[N]T"            a fixed-size Go array, e.g. "[2]uint" (ConsoleSize)
#   "Name" / "*Name"  a struct (by name in STRUCTS); "*" = Go pointer (JSON null means unset)
#   "*T"              likewise a Go pointer to any other type T: "*int" (*int64), "*bool", "*[2]uint"

# container.Config (api/types/container/config.go). Decoded as the embedded *Config of the create
# body, and alone as the body of POST /commit.
_CONTAINER_CONFIG: dict[str, str] = {
    "Hostname": "string",
    "Domainname": "string",
    "User": "string",  # user[:group] the process runs as (may be 0 = root in the container)
    "AttachStdin": "bool",
    "AttachStdout": "bool",
    "AttachStderr": "bool",
    "ExposedPorts": "set",  # nat.PortSet: {"80/tcp": {}}
    "Tty": "bool",
    "OpenStdin": "bool",
    "StdinOnce": "bool",
    "Env": "[]string",  # NVIDIA_VISIBLE_DEVICES here reaches GPUs through the nvidia runtime
    "Cmd": "strslice",
    "Healthcheck": "*HealthConfig",
    "ArgsEscaped": "bool",  # Windows only
    "Image": "string",
    "Volumes": "set",  # anonymous volumes: {"/data": {}}
    "WorkingDir": "string",
    "Entrypoint": "strslice",
    "NetworkDisabled": "bool",
    "MacAddress": "string",  # container-wide MAC; deprecated 1.44, removed from moby at 1.52
    "OnBuild": "[]string",
    "Labels": "map[string]",  # ds01.* labels carry ownership: the gateway stamps them
    "StopSignal": "string",
    "StopTimeout": "*int",
    "Shell": "strslice",
}

# container.Resources (host_config.go), embedded in HostConfig and in UpdateConfig: its fields are
# flattened into both.
_RESOURCES: dict[str, str] = {
    "CpuShares": "int",  # Go CPUShares
    "Memory": "int",  # bytes
    "NanoCpus": "int",  # Go NanoCPUs; --cpus in units of 1e-9 CPUs
    "CgroupParent": "string",  # --cgroup-parent: the slice the container is accounted to
    "BlkioWeight": "uint",  # uint16
    "BlkioWeightDevice": "[]*WeightDevice",
    "BlkioDeviceReadBps": "[]*ThrottleDevice",
    "BlkioDeviceWriteBps": "[]*ThrottleDevice",
    "BlkioDeviceReadIOps": "[]*ThrottleDevice",
    "BlkioDeviceWriteIOps": "[]*ThrottleDevice",
    "CpuPeriod": "int",  # Go CPUPeriod
    "CpuQuota": "int",  # Go CPUQuota
    "CpuRealtimePeriod": "int",  # Go CPURealtimePeriod
    "CpuRealtimeRuntime": "int",  # Go CPURealtimeRuntime
    "CpusetCpus": "string",  # --cpuset-cpus
    "CpusetMems": "string",
    "Devices": "[]DeviceMapping",  # --device: host device nodes in the container
    "DeviceCgroupRules": "[]string",  # --device-cgroup-rule: e.g. "c *:* rwm" opens every char device
    "DeviceRequests": "[]DeviceRequest",  # --gpus
    "KernelMemory": "int",  # deprecated 1.41, ignored from 1.42
    "KernelMemoryTCP": "int",  # ignored from 1.52
    "MemoryReservation": "int",
    "MemorySwap": "int",  # -1 = unlimited swap
    "MemorySwappiness": "*int",  # Go *int64; the docker CLIs send null
    "OomKillDisable": "*bool",  # --oom-kill-disable
    "PidsLimit": "*int",  # Go *int64; 0 or -1 = unlimited
    "Ulimits": "[]*Ulimit",
    "CpuCount": "int",  # Windows only
    "CpuPercent": "int",  # Windows only
    "IOMaximumIOps": "uint",  # Windows only
    "IOMaximumBandwidth": "uint",  # Windows only
}

# container.HostConfig's own fields (host_config.go), before the embedded Resources.
_HOST_CONFIG_OWN: dict[str, str] = {
    "Binds": "[]string",  # -v host:container[:opts]: host paths in the container
    "ContainerIDFile": "string",  # client-side only; the daemon stores it
    "LogConfig": "LogConfig",
    "NetworkMode": "string",  # --network: "host" shares the host's network namespace
    "PortBindings": "map[[]PortBinding]",  # nat.PortMap: {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    "RestartPolicy": "RestartPolicy",
    "AutoRemove": "bool",  # --rm
    "VolumeDriver": "string",
    "VolumesFrom": "[]string",  # --volumes-from: another container's mounts
    "ConsoleSize": "[2]uint",  # [height, width]; in the 20.10 struct, documented from 1.42
    "Annotations": "map[string]",  # passed to the OCI runtime
    "CapAdd": "strslice",  # --cap-add: kernel capabilities (SYS_ADMIN, ... reach the host)
    "CapDrop": "strslice",
    "CgroupnsMode": "string",  # --cgroupns: "host" shares the host's cgroup namespace
    "Dns": "[]string",  # Go DNS
    "DnsOptions": "[]string",  # Go DNSOptions
    "DnsSearch": "[]string",  # Go DNSSearch
    "ExtraHosts": "[]string",
    "GroupAdd": "[]string",  # supplementary groups of the process
    "IpcMode": "string",  # --ipc: "host" shares the host's IPC namespace
    "Cgroup": "string",  # --cgroup: "container:<id>" joins another container's cgroup
    "Links": "[]string",
    "OomScoreAdj": "int",  # Go int
    "PidMode": "string",  # --pid: "host" sees and signals every host process
    "Privileged": "bool",  # --privileged: all capabilities and devices, no confinement
    "PublishAllPorts": "bool",  # -P
    "ReadonlyRootfs": "bool",
    "SecurityOpt": "[]string",  # seccomp=unconfined, apparmor=unconfined, label=disable, ...
    "StorageOpt": "map[string]",  # storage driver options (size=...)
    "Tmpfs": "map[string]",  # --tmpfs path: options
    "UTSMode": "string",  # --uts: "host" shares the host's hostname namespace
    "UsernsMode": "string",  # --userns: "host" turns off user-namespace remapping
    "ShmSize": "int",
    "Sysctls": "map[string]",  # --sysctl: namespaced kernel parameters
    "Runtime": "string",  # --runtime: the OCI runtime (nvidia, runc, ...)
    "Isolation": "string",  # Windows only
    "Mounts": "[]Mount",  # --mount: bind (host path), volume, tmpfs, image, cluster
    "MaskedPaths": "[]string",  # [] unmasks /proc/kcore, /proc/keys, ... (as --privileged does)
    "ReadonlyPaths": "[]string",  # [] makes /proc/sys, /proc/sysrq-trigger, ... writable
    "Init": "*bool",  # --init
}

STRUCTS: dict[str, dict[str, str]] = {
    # POST /containers/create: runconfig.ContainerConfigWrapper (runconfig/config_unix.go) = the
    # embedded *container.Config, "HostConfig" (InnerHostConfig), "NetworkingConfig", and also the
    # deprecated top-level Cpuset and embedded *HostConfig (see DEPRECATED_TOP_LEVEL_HOSTCONFIG,
    # deliberately not in this table). Newer clients send container.CreateRequest: the same keys.
    "ContainerCreate": {
        **_CONTAINER_CONFIG,
        "HostConfig": "*HostConfig",
        "NetworkingConfig": "*NetworkingConfig",
    },
    # POST /commit: container.Config alone (the daemon decodes the whole wrapper, uses only Config).
    "ContainerConfig": dict(_CONTAINER_CONFIG),
    "HealthConfig": {  # 20.10: container.HealthConfig; newer: docker-image-spec HealthcheckConfig
        "Test": "[]string",  # ["NONE"] | ["CMD", args...] | ["CMD-SHELL", command]
        "Interval": "int",  # time.Duration, nanoseconds
        "Timeout": "int",  # time.Duration
        "StartPeriod": "int",  # time.Duration
        "StartInterval": "int",  # time.Duration
        "Retries": "int",  # Go int
    },
    "HostConfig": {**_HOST_CONFIG_OWN, **_RESOURCES},
    # POST /containers/{id}/update: container.UpdateConfig = embedded Resources + RestartPolicy.
    "UpdateConfig": {**_RESOURCES, "RestartPolicy": "RestartPolicy"},
    "LogConfig": {
        "Type": "string",  # log driver
        "Config": "map[string]",  # log driver options
    },
    "RestartPolicy": {
        "Name": "string",  # "", "no", "always", "on-failure", "unless-stopped"
        "MaximumRetryCount": "int",  # Go int
    },
    "PortBinding": {  # go-connections nat.PortBinding
        "HostIp": "string",  # Go HostIP
        "HostPort": "string",
    },
    "DeviceMapping": {
        "PathOnHost": "string",  # the host device node
        "PathInContainer": "string",
        "CgroupPermissions": "string",  # "rwm"
    },
    "DeviceRequest": {
        "Driver": "string",  # "nvidia", "cdi"
        "Count": "int",  # Go int; -1 = all devices
        "DeviceIDs": "[]string",  # GPU UUIDs or indexes
        "Capabilities": "[][]string",  # OR of ANDs, e.g. [["gpu"]]
        "Options": "map[string]",
    },
    "WeightDevice": {  # blkiodev.WeightDevice
        "Path": "string",
        "Weight": "uint",  # uint16
    },
    "ThrottleDevice": {  # blkiodev.ThrottleDevice
        "Path": "string",
        "Rate": "uint",  # uint64
    },
    "Ulimit": {  # go-units Ulimit
        "Name": "string",
        "Hard": "int",
        "Soft": "int",
    },
    "Mount": {  # mount.Mount
        "Type": "string",  # bind | volume | tmpfs | npipe | image | cluster
        "Source": "string",  # for bind: a host path
        "Target": "string",
        "ReadOnly": "bool",
        "Consistency": "string",
        "BindOptions": "*BindOptions",
        "VolumeOptions": "*VolumeOptions",
        "ImageOptions": "*ImageOptions",
        "TmpfsOptions": "*TmpfsOptions",
        "ClusterOptions": "*ClusterOptions",
    },
    "BindOptions": {
        "Propagation": "string",  # rshared/shared lets container mounts reach the host
        "NonRecursive": "bool",
        "CreateMountpoint": "bool",  # creates the missing host path (as root)
        "ReadOnlyNonRecursive": "bool",
        "ReadOnlyForceRecursive": "bool",
    },
    "VolumeOptions": {
        "NoCopy": "bool",
        "Labels": "map[string]",
        "Subpath": "string",  # a path inside the volume
        "DriverConfig": "*Driver",  # creates the volume: local driver type=none,o=bind,device=<host path>
    },
    "ImageOptions": {
        "Subpath": "string",
    },
    "Driver": {  # mount.Driver
        "Name": "string",
        "Options": "map[string]",  # local: type, o, device (a bind of any host path)
    },
    "TmpfsOptions": {
        "SizeBytes": "int",
        "Mode": "uint",  # os.FileMode (uint32)
        "Options": "[][]string",  # [["exec"], ["uid", "0"]]
    },
    "ClusterOptions": {},  # mount.ClusterOptions: an empty struct (swarm cluster volumes)
    "NetworkingConfig": {
        "EndpointsConfig": "map[*EndpointSettings]",  # network name → endpoint settings
    },
    "EndpointSettings": {  # network.EndpointSettings
        "IPAMConfig": "*EndpointIPAMConfig",
        "Links": "[]string",
        "Aliases": "[]string",
        "DriverOpts": "map[string]",
        "GwPriority": "int",  # Go int
        "NetworkID": "string",
        "EndpointID": "string",
        "Gateway": "string",
        "IPAddress": "string",
        "IPPrefixLen": "int",  # Go int
        "IPv6Gateway": "string",
        "GlobalIPv6Address": "string",
        "GlobalIPv6PrefixLen": "int",  # Go int
        "MacAddress": "string",
        "DNSNames": "[]string",
    },
    "EndpointIPAMConfig": {
        "IPv4Address": "string",
        "IPv6Address": "string",
        "LinkLocalIPs": "[]string",
    },
    # POST /containers/{id}/exec: types.ExecConfig (20.10) / container.ExecCreateRequest (newer).
    "ExecConfig": {
        "User": "string",  # -u: the exec's user (0 = root in the container)
        "Privileged": "bool",  # --privileged: all capabilities for the exec'd process
        "Tty": "bool",
        "ConsoleSize": "*[2]uint",  # [height, width]
        "AttachStdin": "bool",
        "AttachStderr": "bool",
        "AttachStdout": "bool",
        "Detach": "bool",  # dropped from the newer struct; 20.10 decodes it
        "DetachKeys": "string",
        "Env": "[]string",
        "WorkingDir": "string",
        "Cmd": "[]string",  # a list (not a strslice)
        "Container": "string",  # sent by the docker SDK for Python; no dockerd struct has it (see CLIENT_ONLY)
    },
    # POST /exec/{id}/start: types.ExecStartCheck (20.10) / container.ExecStartRequest (newer).
    "ExecStartCheck": {
        "Detach": "bool",
        "Tty": "bool",
        "ConsoleSize": "*[2]uint",
    },
    # POST /volumes/create: volume.VolumeCreateBody (20.10) / volume.CreateOptions (newer).
    "VolumeCreateBody": {
        "ClusterVolumeSpec": "*ClusterVolumeSpec",  # swarm (CSI) volumes only
        "Driver": "string",
        "DriverOpts": "map[string]",  # local: type=none,o=bind,device=<any host path> binds the host
        "Labels": "map[string]",
        "Name": "string",
    },
    # PUT /volumes/{name}: volume.UpdateOptions (route added in 1.42; dockerd 20.10 answers 404).
    "VolumeUpdateBody": {
        "Spec": "*ClusterVolumeSpec",
    },
    "ClusterVolumeSpec": {
        "Group": "string",
        "AccessMode": "*AccessMode",
        "AccessibilityRequirements": "*TopologyRequirement",
        "CapacityRange": "*CapacityRange",
        "Secrets": "[]ClusterVolumeSecret",
        "Availability": "string",  # active | pause | drain
    },
    "AccessMode": {
        "Scope": "string",  # single | multi
        "Sharing": "string",  # none | readonly | onewriter | all
        "MountVolume": "*TypeMount",
        "BlockVolume": "*TypeBlock",
    },
    "TypeMount": {
        "FsType": "string",
        "MountFlags": "[]string",
    },
    "TypeBlock": {},  # an empty struct
    "TopologyRequirement": {
        "Requisite": "[]Topology",
        "Preferred": "[]Topology",
    },
    "Topology": {
        "Segments": "map[string]",
    },
    "CapacityRange": {
        "RequiredBytes": "int",
        "LimitBytes": "int",
    },
    "ClusterVolumeSecret": {  # volume.Secret
        "Key": "string",
        "Secret": "string",
    },
    # POST /networks/create: types.NetworkCreateRequest = embedded NetworkCreate + Name (20.10);
    # network.CreateRequest (newer).
    "NetworkCreateRequest": {
        "Name": "string",
        "CheckDuplicate": "bool",  # deprecated 1.44 (then *bool); 20.10 decodes it
        "Driver": "string",
        "Scope": "string",
        "EnableIPv4": "*bool",
        "EnableIPv6": "bool",  # *bool in the newer struct
        "IPAM": "*IPAM",
        "Internal": "bool",
        "Attachable": "bool",
        "Ingress": "bool",  # swarm routing mesh
        "ConfigOnly": "bool",
        "ConfigFrom": "*ConfigReference",
        "Options": "map[string]",  # driver options (bridge name, MTU, ...)
        "Labels": "map[string]",
    },
    "IPAM": {
        "Driver": "string",
        "Options": "map[string]",
        "Config": "[]IPAMConfig",
    },
    "IPAMConfig": {
        "Subnet": "string",
        "IPRange": "string",
        "Gateway": "string",
        "AuxiliaryAddresses": "map[string]",  # Go AuxAddress
    },
    "ConfigReference": {
        "Network": "string",
    },
    # POST /networks/{id}/connect: types.NetworkConnect / network.ConnectRequest.
    "NetworkConnect": {
        "Container": "string",
        "EndpointConfig": "*EndpointSettings",
    },
    # POST /networks/{id}/disconnect: types.NetworkDisconnect / network.DisconnectRequest.
    "NetworkDisconnect": {
        "Container": "string",
        "Force": "bool",
    },
    # POST /auth (and the legacy body of POST /images/{name}/push): types.AuthConfig. The JSON
    # names are lower case (struct tags).
    "AuthConfig": {
        "username": "string",
        "password": "string",
        "auth": "string",
        "email": "string",  # dropped from the newest struct; 20.10 decodes it
        "serveraddress": "string",
        "identitytoken": "string",
        "registrytoken": "string",
    },
}

# Fields not in the 20.10 structs, with the API version of the first release whose struct has them.
SINCE: dict[tuple[str, str], str] = {
    ("HealthConfig", "StartInterval"): "1.44",
    ("HostConfig", "Annotations"): "1.43",
    ("Mount", "ClusterOptions"): "1.42",
    ("Mount", "ImageOptions"): "1.48",
    ("BindOptions", "CreateMountpoint"): "1.42",
    ("BindOptions", "ReadOnlyNonRecursive"): "1.44",
    ("BindOptions", "ReadOnlyForceRecursive"): "1.44",
    ("VolumeOptions", "Subpath"): "1.45",
    ("ImageOptions", "Subpath"): "1.48",
    ("TmpfsOptions", "Options"): "1.46",
    ("EndpointSettings", "DNSNames"): "1.44",
    ("EndpointSettings", "GwPriority"): "1.48",
    ("ExecConfig", "ConsoleSize"): "1.42",
    ("ExecStartCheck", "ConsoleSize"): "1.42",
    ("VolumeCreateBody", "ClusterVolumeSpec"): "1.42",
    ("VolumeUpdateBody", "Spec"): "1.42",
    ("ClusterVolumeSpec", "Group"): "1.42",
    ("ClusterVolumeSpec", "AccessMode"): "1.42",
    ("ClusterVolumeSpec", "AccessibilityRequirements"): "1.42",
    ("ClusterVolumeSpec", "CapacityRange"): "1.42",
    ("ClusterVolumeSpec", "Secrets"): "1.42",
    ("ClusterVolumeSpec", "Availability"): "1.42",
    ("AccessMode", "Scope"): "1.42",
    ("AccessMode", "Sharing"): "1.42",
    ("AccessMode", "MountVolume"): "1.42",
    ("AccessMode", "BlockVolume"): "1.42",
    ("TypeMount", "FsType"): "1.42",
    ("TypeMount", "MountFlags"): "1.42",
    ("TopologyRequirement", "Requisite"): "1.42",
    ("TopologyRequirement", "Preferred"): "1.42",
    ("Topology", "Segments"): "1.42",
    ("CapacityRange", "RequiredBytes"): "1.42",
    ("CapacityRange", "LimitBytes"): "1.42",
    ("ClusterVolumeSecret", "Key"): "1.42",
    ("ClusterVolumeSecret", "Secret"): "1.42",
    ("NetworkCreateRequest", "EnableIPv4"): "1.48",
}

# Keys real clients send that no dockerd version decodes (Go drops them); the table carries them only
# so those clients are not refused. Each was seen in a captured body (tests/fixtures/gateway/client-bodies).
CLIENT_ONLY: frozenset[tuple[str, str]] = frozenset(
    {
        ("ExecConfig", "Container"),  # docker SDK for Python exec_create (docker/api/exec_api.py)
    }
)

# HostConfig field names dockerd 20.10 also reads at the top level of a create body:
# ContainerConfigWrapper embeds *container.HostConfig next to *container.Config, so every HostConfig
# field (its embedded Resources' too) is promoted to the top level, and it has its own top-level
# Cpuset. getHostConfig (runconfig/config_unix.go) then uses the top-level HostConfig wholesale
# when the body has no "HostConfig" object, and otherwise copies Memory, MemorySwap, CpuShares,
# CpusetCpus and VolumeDriver (and Cpuset into CpusetCpus) from the top level into an unset inner
# value. So {"Image": "x", "Privileged": true, "Binds": ["/:/host"]} is a privileged create: these
# names must never pass at the top level unchecked. The same wrapper is decoded by POST /commit
# (DecodeConfig; the host config is validated and dropped) and by the deprecated start body.
# None of these names is a container.Config field (Go would drop a name promoted from both).
# (Annotations, added in 1.43, is not promoted by 20.10 but is by the 1.43-1.45 daemons that still
# embed HostConfig in the wrapper; it is listed so that an upgraded daemon changes nothing here.)
DEPRECATED_TOP_LEVEL_HOSTCONFIG: frozenset[str] = frozenset({"Cpuset", *_HOST_CONFIG_OWN, *_RESOURCES})

BODIES: dict[str, str] = {  # route → struct the daemon decodes the body into
    "containers.create": "ContainerCreate",  # POST /containers/create
    # POST /containers/{id}/update (Resources + RestartPolicy; swagger also lists "Init", which the Go
    # struct lacks, so dockerd ignores it: left out).
    "containers.update": "UpdateConfig",
    "exec.create": "ExecConfig",  # POST /containers/{id}/exec
    "exec.start": "ExecStartCheck",  # POST /exec/{id}/start
    "volumes.create": "VolumeCreateBody",  # POST /volumes/create
    "volumes.update": "VolumeUpdateBody",  # PUT /volumes/{name} (1.42+, cluster volumes; 404 on 20.10)
    "networks.create": "NetworkCreateRequest",  # POST /networks/create
    "networks.connect": "NetworkConnect",  # POST /networks/{id}/connect
    "networks.disconnect": "NetworkDisconnect",  # POST /networks/{id}/disconnect
    "commit": "ContainerConfig",  # POST /commit body (container.Config alone; the docker CLI sends null)
    "auth": "AuthConfig",  # POST /auth
    "images.push": "AuthConfig",  # POST /images/{name}/push, read only when X-Registry-Auth is absent
}
# JSON-body routes deliberately left out of BODIES:
# - POST /containers/{id}/start: dockerd 20.10 decodes a body there into the whole
#   ContainerConfigWrapper (DecodeHostConfig) for API versions below 1.24 (for example
#   /v1.23/containers/{id}/start) and then REPLACES the container's HostConfig with it
#   (daemon/start.go → setHostConfig): binds, privileged, devices. No current client sends one
#   (1.24+ answers 400 "starting container with non-empty request body was deprecated since API
#   v1.22 and removed in v1.24"), so the gateway must refuse any non-empty start body rather than
#   check it.
# - POST /containers/{id}/copy (types.CopyConfig): removed since API 1.24; not routed by the gateway.
# - POST /containers/{id}/checkpoints (types.CheckpointCreateOptions): experimental daemons only.
# - plugins, swarm, services, nodes, secrets, configs, tasks: admin-only routes, never checked.
# - POST /build, PUT /containers/{id}/archive, POST /images/load, POST /images/create (import):
#   tar or raw bodies, not JSON; the build's JSON inputs arrive in the query and in headers.
# - X-Registry-Auth / X-Registry-Config headers (base64 JSON AuthConfig): headers, not bodies.
