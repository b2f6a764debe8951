# Evaluates vagrant/Vagrantfile against a recording stand-in for Vagrant's configuration API
# (Vagrant itself cannot run on the CI machine) and checks what it configures: the box, both
# providers with enough CPUs and memory, the repository synced to /cpengine by rsync without
# build outputs, and one shell provisioner per vagrant/provision/NN-*.sh, in order.
#
#   ruby vagrant/ci/vagrantfile_check.rb [VAGRANTFILE]
#
# Exits non-zero with one line per problem.

# Records every setting and call made on it; nested namespaces (config.vm, a provider's block
# argument) are recorders too.
class Recorder
  attr_reader :settings, :calls

  def initialize
    @settings = {}
    @calls = []
    @children = {}
  end

  def [](name)
    @children[name.to_s]
  end

  def method_missing(name, *args, **kwargs, &block)
    key = name.to_s
    if key.end_with?("=")
      @settings[key.chomp("=")] = args.first
    elsif args.empty? && kwargs.empty? && block.nil?
      @children[key] ||= Recorder.new
    else
      child = Recorder.new
      block&.call(child, Recorder.new)
      @calls << { name: key, args: args, kwargs: kwargs, block: child }
      child
    end
  end

  def respond_to_missing?(_name, _include_private = false)
    true
  end
end

# The part of Vagrant's API a Vagrantfile calls at load time.
module Vagrant
  @required = []
  @configs = []
  class << self
    attr_reader :required, :configs

    def require_version(*requirements)
      @required.concat(requirements)
    end

    def configure(version)
      config = Recorder.new
      yield config
      @configs << [version, config]
    end
  end
end

vagrantfile = File.expand_path(ARGV[0] || File.join(__dir__, "..", "Vagrantfile"))
playground = File.dirname(vagrantfile)
errors = []
check = ->(cond, msg) { errors << msg unless cond }

# rubocop:disable Security/Eval -- the file under test is this repository's own Vagrantfile
eval(File.read(vagrantfile), binding, vagrantfile)
# rubocop:enable Security/Eval

check.call(Vagrant.required.any? { |r| r =~ />=\s*2\.3/ }, "Vagrant.require_version must ask for >= 2.3")
check.call(Vagrant.configs.size == 1, "expected one Vagrant.configure block, found #{Vagrant.configs.size}")
version, config = Vagrant.configs.first
check.call(version == "2", "Vagrant.configure must use configuration version \"2\"")
vm = config["vm"]
raise "the Vagrantfile never touches config.vm" if vm.nil?

box = vm.settings["box"].to_s
check.call(box == "debian/bookworm64", "box is #{box.inspect}; the provisioning steps target Debian 12 (debian/bookworm64)")

providers = vm.calls.select { |c| c[:name] == "provider" }
%w[libvirt virtualbox].each do |name|
  provider = providers.find { |c| c[:args].first.to_s == name }
  unless provider
    errors << "no #{name} provider block"
    next
  end
  settings = provider[:block].settings
  check.call(settings["cpus"].is_a?(Integer) && settings["cpus"] >= 2, "#{name}: cpus must be >= 2 (kubeadm needs 2)")
  check.call(settings["memory"].is_a?(Integer) && settings["memory"] >= 4096,
             "#{name}: memory must be >= 4096 MiB (control plane plus a Rust build)")
end

folders = vm.calls.select { |c| c[:name] == "synced_folder" }
repo = folders.find { |c| c[:args][1] == "/cpengine" }
if repo.nil?
  errors << "the repository is not synced to /cpengine (the steps run /cpengine/vagrant/provision/*.sh)"
else
  check.call(File.expand_path(repo[:args][0].to_s, playground) == File.expand_path("..", playground),
             "the folder synced to /cpengine must be the repository root (\"..\")")
  check.call(repo[:kwargs][:type] == "rsync", "the repository must be synced with type: \"rsync\" (works on both providers)")
  excludes = Array(repo[:kwargs][:rsync__exclude])
  ["target/", ".git/", "vagrant/.vagrant/"].each do |dir|
    check.call(excludes.include?(dir), "rsync__exclude must contain #{dir}")
  end
end
default = folders.find { |c| c[:args][1] == "/vagrant" }
check.call(default && default[:kwargs][:disabled] == true, "the default /vagrant share must be disabled")

steps = Dir.children(File.join(playground, "provision")).grep(/\A\d\d-[a-z0-9-]+\.sh\z/).sort
check.call(!steps.empty?, "no provisioning steps in vagrant/provision/")
provisioners = vm.calls.select { |c| c[:name] == "provision" }
names = provisioners.map { |c| c[:args].first.to_s }
check.call(names == steps.map { |s| s.delete_suffix(".sh") },
           "provisioners #{names} must be exactly the steps in vagrant/provision/ in order: #{steps}")
provisioners.each do |c|
  name = c[:args].first.to_s
  check.call(c[:kwargs][:type] == "shell", "provisioner #{name} must be type: \"shell\"")
  check.call(c[:kwargs][:privileged] != false, "provisioner #{name} must run as root")
  inline = c[:kwargs][:inline].to_s
  check.call(inline.include?("/cpengine/vagrant/provision/#{name}.sh"),
             "provisioner #{name} must run /cpengine/vagrant/provision/#{name}.sh (runs: #{inline.inspect})")
  script = File.join(playground, "provision", "#{name}.sh")
  check.call(File.executable?(script), "#{script} is missing or not executable")
end

if errors.empty?
  puts "Vagrantfile: box #{box}, providers libvirt + virtualbox, #{names.size} provisioning steps: ok"
else
  errors.each { |e| warn "error: Vagrantfile: #{e}" }
  exit 1
end
