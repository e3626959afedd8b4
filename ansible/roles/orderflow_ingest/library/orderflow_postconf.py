#!/usr/bin/python
"""Apply main.cf settings and master.cf services through postconf(1), idempotently.

The role's Postfix settings come from the project's postfix-config/ fragments (the same files
the devstack renders). This module merges them into an existing Postfix configuration the way
an administrator would, with `postconf -e` and `postconf -M`/`-MX`, and only where the live
value differs, so a second run reports no change and check mode shows what would change.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: orderflow_postconf
short_description: Merge main.cf settings and master.cf services into a Postfix instance
description:
  - Parses rendered main.cf and master.cf fragments and applies each setting or service that
    differs from the live configuration with postconf(1). Supports check and diff mode.
options:
  config_dir:
    description: Postfix configuration directory (postconf -c).
    type: path
    default: /etc/postfix
  main_cf:
    description: main.cf text (name = value lines, comments, continuation lines).
    type: str
    default: ""
  main_cf_overrides:
    description: Settings applied after main_cf (a value here wins).
    type: dict
    default: {}
  master_cf:
    description: master.cf text; each entry replaces the live entry of the same name/type.
    type: str
    default: ""
  remove_services:
    description: master.cf entries (name/type) to remove when present.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Apply the orderflow Postfix settings
  orderflow_postconf:
    main_cf: "relay_domains = orderflow.example.com\n"
    master_cf: "orderflow unix - n n - 8 pipe flags=R user=orderflow argv=/bin/true\n"
    remove_services: [smtp/inet]
"""

RETURN = r"""
main_changed:
  description: Names of the main.cf settings that were (or would be) set.
  type: list
  returned: always
services_changed:
  description: master.cf entries (name/type) that were (or would be) set.
  type: list
  returned: always
services_removed:
  description: master.cf entries (name/type) that were (or would be) removed.
  type: list
  returned: always
"""

import re

from ansible.module_utils.basic import AnsibleModule

MAIN_CF_LINE = re.compile(r"^([A-Za-z0-9_.-]+)\s*=\s?(.*)$")


def logical_lines(text):
    """Lines with continuations (leading whitespace) joined; comments and blanks dropped."""
    lines = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[:1] in (" ", "\t"):
            if not lines:
                raise ValueError("continuation line before any setting: %r" % raw)
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.strip())
    return lines


def parse_main_cf(text):
    settings = {}
    for line in logical_lines(text):
        match = MAIN_CF_LINE.match(line)
        if not match:
            raise ValueError("not a main.cf setting: %r" % line)
        settings[match.group(1)] = match.group(2).strip()
    return settings


def parse_master_cf(text):
    services = {}
    for line in logical_lines(text):
        fields = line.split()
        if len(fields) < 8:
            raise ValueError("a master.cf entry needs 8 fields or more: %r" % line)
        services[fields[0] + "/" + fields[1]] = line
    return services


def normal(value):
    return None if value is None else " ".join(value.split())


def postconf(module, config_dir, *args):
    command = [module.get_bin_path("postconf", required=True), "-c", config_dir, *args]
    rc, out, err = module.run_command(command, environ_update={"LANG": "C"})
    if rc != 0:
        module.fail_json(msg="%s failed: %s" % (" ".join(command[:4]), err.strip()), rc=rc)
    return out


def main():
    module = AnsibleModule(
        argument_spec={
            "config_dir": {"type": "path", "default": "/etc/postfix"},
            "main_cf": {"type": "str", "default": ""},
            "main_cf_overrides": {"type": "dict", "default": {}},
            "master_cf": {"type": "str", "default": ""},
            "remove_services": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    config_dir = module.params["config_dir"]
    try:
        wanted_main = parse_main_cf(module.params["main_cf"])
        wanted_services = parse_master_cf(module.params["master_cf"])
    except ValueError as error:
        module.fail_json(msg=str(error))
    for name, value in module.params["main_cf_overrides"].items():
        wanted_main[name] = "" if value is None else str(value)

    live_main = parse_main_cf(postconf(module, config_dir, "-n"))
    live_services = parse_master_cf(postconf(module, config_dir, "-M"))

    main_changes = {
        name: value
        for name, value in wanted_main.items()
        if normal(live_main.get(name)) != normal(value)
    }
    service_changes = {
        key: line
        for key, line in wanted_services.items()
        if normal(live_services.get(key)) != normal(line)
    }
    removals = [
        key
        for key in module.params["remove_services"]
        if key in live_services and key not in wanted_services
    ]

    changed = bool(main_changes or service_changes or removals)
    before = [
        "%s = %s" % (name, live_main[name]) for name in main_changes if name in live_main
    ]
    before += [live_services[key] for key in service_changes if key in live_services]
    before += [live_services[key] for key in removals]
    after = ["%s = %s" % item for item in main_changes.items()]
    after += list(service_changes.values())

    if changed and not module.check_mode:
        if main_changes:
            postconf(module, config_dir, "-e", *("%s=%s" % item for item in main_changes.items()))
        for key, line in service_changes.items():
            postconf(module, config_dir, "-M", "%s=%s" % (key, line))
        for key in removals:
            postconf(module, config_dir, "-MX", key)

    module.exit_json(
        changed=changed,
        main_changed=sorted(main_changes),
        services_changed=sorted(service_changes),
        services_removed=removals,
        diff={
            "before_header": config_dir + " (live)",
            "after_header": config_dir + " (wanted)",
            "before": "\n".join(before) + ("\n" if before else ""),
            "after": "\n".join(after) + ("\n" if after else ""),
        },
    )


if __name__ == "__main__":
    main()
