// Command go_oracle decodes Docker container-create bodies exactly the way dockerd 20.10 does.
//
// It is the reference the gateway's canonical decoder is fuzzed against
// (tests/unit/test_gateway_canonical_fuzz.py). The structs below mirror a representative subset
// of moby 20.10's api/types/container (Config, HostConfig with its embedded Resources),
// api/types/mount, api/types/strslice and api/types/network, with Docker's own field names,
// tags and types; ContainerConfigWrapper and getHostConfig are moby's runconfig/config_unix.go
// and decode is runconfig/config.go's decodeContainerConfig without the platform validation.
//
// Usage:
//
//	go_oracle -schema   print the field table ({"structs": {...}, "bodies": {...}}) derived by
//	                    reflection, in the format of gateway/apispec.py
//	go_oracle           read one base64-encoded body per line on stdin; for each write one line:
//	                    {"Config": ..., "HostConfig": ..., "NetworkingConfig": ...} re-marshalled
//	                    with the canonical names, or {"error": "<what encoding/json said>"}
//
// Standard library only (encoding/json is the point).
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
)

// ---- api/types/strslice ----------------------------------------------------------------------

// StrSlice is a list of strings that also unmarshals from a single JSON string.
type StrSlice []string

// UnmarshalJSON is strslice.StrSlice.UnmarshalJSON: a list, or one string.
func (e *StrSlice) UnmarshalJSON(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	p := make([]string, 0, 1)
	if err := json.Unmarshal(b, &p); err != nil {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		p = append(p, s)
	}
	*e = p
	return nil
}

// ---- api/types/container/config.go -----------------------------------------------------------

type HealthConfig struct {
	Test        []string `json:",omitempty"`
	Interval    int64    `json:",omitempty"`
	Timeout     int64    `json:",omitempty"`
	StartPeriod int64    `json:",omitempty"`
	Retries     int      `json:",omitempty"`
}

type Config struct {
	Hostname        string
	Domainname      string
	User            string
	AttachStdin     bool
	AttachStdout    bool
	AttachStderr    bool
	ExposedPorts    map[string]struct{} `json:",omitempty"`
	Tty             bool
	OpenStdin       bool
	StdinOnce       bool
	Env             []string
	Cmd             StrSlice
	Healthcheck     *HealthConfig `json:",omitempty"`
	ArgsEscaped     bool          `json:",omitempty"`
	Image           string
	Volumes         map[string]struct{}
	WorkingDir      string
	Entrypoint      StrSlice
	NetworkDisabled bool   `json:",omitempty"`
	MacAddress      string `json:",omitempty"`
	OnBuild         []string
	Labels          map[string]string
	StopSignal      string   `json:",omitempty"`
	StopTimeout     *int     `json:",omitempty"`
	Shell           StrSlice `json:",omitempty"`
}

// ---- api/types/container/host_config.go ------------------------------------------------------

type LogConfig struct {
	Type   string
	Config map[string]string
}

type RestartPolicy struct {
	Name              string
	MaximumRetryCount int
}

type DeviceMapping struct {
	PathOnHost        string
	PathInContainer   string
	CgroupPermissions string
}

type DeviceRequest struct {
	Driver       string
	Count        int
	DeviceIDs    []string
	Capabilities [][]string
	Options      map[string]string
}

type Ulimit struct {
	Name string
	Hard int64
	Soft int64
}

type Resources struct {
	CPUShares         int64 `json:"CpuShares"`
	Memory            int64
	NanoCPUs          int64 `json:"NanoCpus"`
	CgroupParent      string
	BlkioWeight       uint16
	CPUPeriod         int64 `json:"CpuPeriod"`
	CPUQuota          int64 `json:"CpuQuota"`
	CpusetCpus        string
	CpusetMems        string
	Devices           []DeviceMapping
	DeviceCgroupRules []string
	DeviceRequests    []DeviceRequest
	KernelMemory      int64
	MemoryReservation int64
	MemorySwap        int64
	MemorySwappiness  *int64
	OomKillDisable    *bool
	PidsLimit         *int64
	Ulimits           []*Ulimit
}

type HostConfig struct {
	Binds           []string
	ContainerIDFile string
	LogConfig       LogConfig
	NetworkMode     string
	RestartPolicy   RestartPolicy
	AutoRemove      bool
	VolumeDriver    string
	VolumesFrom     []string
	CapAdd          StrSlice
	CapDrop         StrSlice
	CgroupnsMode    string
	DNS             []string `json:"Dns"`
	ExtraHosts      []string
	GroupAdd        []string
	IpcMode         string
	Cgroup          string
	OomScoreAdj     int
	PidMode         string
	Privileged      bool
	ReadonlyRootfs  bool
	SecurityOpt     []string
	StorageOpt      map[string]string `json:",omitempty"`
	Tmpfs           map[string]string `json:",omitempty"`
	UTSMode         string
	UsernsMode      string
	ShmSize         int64
	Sysctls         map[string]string `json:",omitempty"`
	Runtime         string            `json:",omitempty"`
	ConsoleSize     [2]uint
	Isolation       string

	Resources

	Mounts        []Mount `json:",omitempty"`
	MaskedPaths   []string
	ReadonlyPaths []string
	Init          *bool `json:",omitempty"`
}

// ---- api/types/mount/mount.go ----------------------------------------------------------------

type BindOptions struct {
	Propagation  string `json:",omitempty"`
	NonRecursive bool   `json:",omitempty"`
}

type Driver struct {
	Name    string            `json:",omitempty"`
	Options map[string]string `json:",omitempty"`
}

type VolumeOptions struct {
	NoCopy       bool              `json:",omitempty"`
	Labels       map[string]string `json:",omitempty"`
	DriverConfig *Driver           `json:",omitempty"`
}

type TmpfsOptions struct {
	SizeBytes int64  `json:",omitempty"`
	Mode      uint32 `json:",omitempty"`
}

type Mount struct {
	Type          string         `json:",omitempty"`
	Source        string         `json:",omitempty"`
	Target        string         `json:",omitempty"`
	ReadOnly      bool           `json:",omitempty"`
	Consistency   string         `json:",omitempty"`
	BindOptions   *BindOptions   `json:",omitempty"`
	VolumeOptions *VolumeOptions `json:",omitempty"`
	TmpfsOptions  *TmpfsOptions  `json:",omitempty"`
}

// ---- api/types/network/network.go ------------------------------------------------------------

type EndpointIPAMConfig struct {
	IPv4Address  string   `json:",omitempty"`
	IPv6Address  string   `json:",omitempty"`
	LinkLocalIPs []string `json:",omitempty"`
}

type EndpointSettings struct {
	IPAMConfig *EndpointIPAMConfig
	Links      []string
	Aliases    []string
	NetworkID  string
	EndpointID string
	Gateway    string
	IPAddress  string
	MacAddress string
	DriverOpts map[string]string
}

type NetworkingConfig struct {
	EndpointsConfig map[string]*EndpointSettings
}

// ---- runconfig/config_unix.go (moby 20.10) ---------------------------------------------------

// ContainerConfigWrapper is a Config wrapper that holds the container Config (portable)
// and the corresponding HostConfig (non-portable).
type ContainerConfigWrapper struct {
	*Config
	InnerHostConfig  *HostConfig       `json:"HostConfig,omitempty"`
	Cpuset           string            `json:",omitempty"` // Deprecated. Exported for backwards compatibility.
	NetworkingConfig *NetworkingConfig `json:"NetworkingConfig,omitempty"`
	*HostConfig                        // Deprecated. Exported to read attributes from json that are not in the inner host config structure.
}

// getHostConfig gets the HostConfig of the Config, merging the deprecated top-level fields.
func (w *ContainerConfigWrapper) getHostConfig() *HostConfig {
	hc := w.HostConfig

	if hc == nil && w.InnerHostConfig != nil {
		hc = w.InnerHostConfig
	} else if w.InnerHostConfig != nil {
		if hc.Memory != 0 && w.InnerHostConfig.Memory == 0 {
			w.InnerHostConfig.Memory = hc.Memory
		}
		if hc.MemorySwap != 0 && w.InnerHostConfig.MemorySwap == 0 {
			w.InnerHostConfig.MemorySwap = hc.MemorySwap
		}
		if hc.CPUShares != 0 && w.InnerHostConfig.CPUShares == 0 {
			w.InnerHostConfig.CPUShares = hc.CPUShares
		}
		if hc.CpusetCpus != "" && w.InnerHostConfig.CpusetCpus == "" {
			w.InnerHostConfig.CpusetCpus = hc.CpusetCpus
		}
		if hc.VolumeDriver != "" && w.InnerHostConfig.VolumeDriver == "" {
			w.InnerHostConfig.VolumeDriver = hc.VolumeDriver
		}
		hc = w.InnerHostConfig
	}

	if hc != nil {
		if w.Cpuset != "" && hc.CpusetCpus == "" {
			hc.CpusetCpus = w.Cpuset
		}
	}

	// SetDefaultNetModeIfBlank
	if hc != nil && hc.NetworkMode == "" {
		hc.NetworkMode = "default"
	}
	return hc
}

// ---- runconfig/config.go decodeContainerConfig -----------------------------------------------

type decoded struct {
	Config           *Config
	HostConfig       *HostConfig
	NetworkingConfig *NetworkingConfig
}

func decode(body []byte) (*decoded, error) {
	var w ContainerConfigWrapper
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&w); err != nil {
		return nil, err
	}
	hc := w.getHostConfig()
	if hc != nil && w.Config != nil && w.Config.Volumes == nil {
		w.Config.Volumes = make(map[string]struct{})
	}
	return &decoded{w.Config, hc, w.NetworkingConfig}, nil
}

// ---- the field table, by reflection ----------------------------------------------------------

var strSliceType = reflect.TypeOf(StrSlice(nil))

func typeName(t reflect.Type, structs map[string]map[string]string) string {
	if t == strSliceType {
		return "strslice"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "int"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "uint"
	case reflect.Float32, reflect.Float64:
		return "float"
	case reflect.Slice:
		return "[]" + typeName(t.Elem(), structs)
	case reflect.Array:
		return fmt.Sprintf("[%d]%s", t.Len(), typeName(t.Elem(), structs))
	case reflect.Map:
		if t.Elem().Kind() == reflect.Struct && t.Elem().NumField() == 0 {
			return "set"
		}
		return "map[" + typeName(t.Elem(), structs) + "]"
	case reflect.Ptr:
		return "*" + typeName(t.Elem(), structs)
	case reflect.Struct:
		addStruct(t, structs)
		return t.Name()
	}
	panic("unsupported type " + t.String())
}

type jsonField struct {
	name   string
	depth  int
	tagged bool
	typ    reflect.Type
}

// fieldsOf lists the JSON fields of t with encoding/json's rules: embedded structs are
// flattened, a shallower field hides a deeper one of the same name, a tagged one wins a tie.
func fieldsOf(t reflect.Type, depth int, out *[]jsonField) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name := strings.Split(tag, ",")[0]
		ft := f.Type
		if f.Anonymous && name == "" {
			if ft.Kind() == reflect.Ptr {
				ft = ft.Elem()
			}
			fieldsOf(ft, depth+1, out)
			continue
		}
		if !f.IsExported() || name == "-" {
			continue
		}
		tagged := name != ""
		if name == "" {
			name = f.Name
		}
		*out = append(*out, jsonField{name, depth, tagged, ft})
	}
}

func addStruct(t reflect.Type, structs map[string]map[string]string) {
	if _, done := structs[t.Name()]; done {
		return
	}
	table := map[string]string{}
	structs[t.Name()] = table
	var all []jsonField
	fieldsOf(t, 0, &all)
	best := map[string]jsonField{}
	for _, f := range all {
		b, seen := best[f.name]
		if !seen || f.depth < b.depth || (f.depth == b.depth && f.tagged && !b.tagged) {
			best[f.name] = f
		}
	}
	for name, f := range best {
		table[name] = typeName(f.typ, structs)
	}
}

func schema() map[string]interface{} {
	structs := map[string]map[string]string{}
	addStruct(reflect.TypeOf(ContainerConfigWrapper{}), structs)
	addStruct(reflect.TypeOf(Config{}), structs)
	// The deprecated top-level HostConfig fields, listed apart so a test can tell them from
	// Config's own (the wrapper's table above already holds both, as dockerd reads them).
	var top []string
	var all []jsonField
	fieldsOf(reflect.TypeOf(HostConfig{}), 0, &all)
	for _, f := range all {
		top = append(top, f.name)
	}
	sort.Strings(top)
	return map[string]interface{}{
		"structs":              structs,
		"bodies":               map[string]string{"containers.create": "ContainerConfigWrapper"},
		"deprecated_top_level": top,
	}
}

// ---- main ------------------------------------------------------------------------------------

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	if len(os.Args) > 1 && os.Args[1] == "-schema" {
		if err := enc.Encode(schema()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		var reply interface{}
		body, err := base64.StdEncoding.DecodeString(strings.TrimSpace(in.Text()))
		if err != nil {
			reply = map[string]string{"oracle_error": err.Error()}
		} else if d, err := decode(body); err != nil {
			reply = map[string]string{"error": err.Error()}
		} else {
			reply = d
		}
		if err := enc.Encode(reply); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out.Flush()
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
