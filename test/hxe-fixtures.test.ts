import test from 'ava';
import { parseImage, strip, StreamingVerifier } from '../src/hxe/index.js';
import type { HxeImage } from '../src/hxe/index.js';
import { fixture, fixtureJson, fixtureNames } from './hxe-craft.js';

/**
 * Compatibility: every image the HSX toolchain made (toolchain/, v1/) parses field for field as the
 * reference parser's JSON says — including t04_value_cmd.hxe, whose full load crashes the reference.
 */
const names = fixtureNames();
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
/** The reference writes ±inf/NaN as strings. */
const refFloat = (v: number | string): number => (v === 'Infinity' ? Infinity : v === '-Infinity' ? -Infinity : v === 'NaN' ? NaN : (v as number));

test('the fixture set is complete: every shared image (16 toolchain v2, 6 v1) is here, each with its reference JSON', (t) => {
  const origins = names.map((n) => fixtureJson(n).file.split('/')[0]);
  t.is(origins.filter((o: string) => o === 'toolchain').length, 16);
  t.is(origins.filter((o: string) => o === 'v1').length, 6);
  t.true(names.includes('t04_value_cmd.hxe'));
});

function checkAgainstReference(t: any, name: string, img: HxeImage): void {
  const json = fixtureJson(name);
  const ref = json.reference.load_hxe_bytes;
  t.true(ref.ok, `${name}: reference parser accepted it`);
  t.is(img.size, json.size);
  const h = img.header;
  const rh = ref.header;
  t.deepEqual(
    { version: h.version, flags: h.flags, entry: h.entry, code_len: h.codeLen, ro_len: h.roLen, bss_size: h.bssSize, req_caps: h.reqCaps, crc32: h.crc32, manifest_present: h.manifestPresent, allow_multiple_instances: h.allowMultipleInstances, app_name: h.appName, meta_offset: h.metaOffset, meta_count: h.metaCount, header_size: h.headerSize },
    { version: rh.version, flags: rh.flags, entry: rh.entry, code_len: rh.code_len, ro_len: rh.ro_len, bss_size: rh.bss_size, req_caps: rh.req_caps, crc32: rh.crc32, manifest_present: rh.manifest_present, allow_multiple_instances: rh.allow_multiple_instances, app_name: rh.app_name ?? '', meta_offset: rh.meta_offset, meta_count: rh.meta_count, header_size: rh.header_size },
    `${name}: header`,
  );
  t.is(hex(img.code), ref.code_hex, `${name}: code`);
  t.is(hex(img.rodata), ref.rodata_hex, `${name}: rodata`);
  const meta = ref.metadata ?? { sections: [], values: [], commands: [], mailboxes: [] };
  t.deepEqual(img.sections, meta.sections.map((s: any) => ({ type: s.type, offset: s.offset, size: s.size, entryCount: s.entry_count })), `${name}: sections`);
  t.is(img.values.length, meta.values.length);
  img.values.forEach((v, i) => {
    const r = meta.values[i];
    t.deepEqual(
      { group: v.group, id: v.id, flags: v.flags, auth: v.auth, initRaw: v.init.raw, name: v.name, unit: v.unit, epsRaw: v.epsilon.raw, minRaw: v.min.raw, maxRaw: v.max.raw, persistKey: v.persistKey, groupName: v.groupName },
      { group: r.group_id, id: r.value_id, flags: r.flags, auth: r.auth_level, initRaw: r.init_raw, name: r.name, unit: r.unit, epsRaw: r.epsilon_raw, minRaw: r.min_raw, maxRaw: r.max_raw, persistKey: r.persist_key, groupName: r.group_name },
      `${name}: value ${i}`,
    );
    // decoded floats exactly, including -65504, +inf and subnormal-adjacent values
    t.is(v.init.value, refFloat(r.init_value));
    t.is(v.epsilon.value, refFloat(r.epsilon));
    t.is(v.min.value, refFloat(r.min));
    t.is(v.max.value, refFloat(r.max));
  });
  t.is(img.commands.length, meta.commands.length);
  img.commands.forEach((c, i) => {
    const r = meta.commands[i];
    t.deepEqual(
      { group: c.group, id: c.id, flags: c.flags, auth: c.auth, handlerOffset: c.handlerOffset, name: c.name, help: c.help, groupName: c.groupName, reserved: c.reserved },
      { group: r.group_id, id: r.cmd_id, flags: r.flags, auth: r.auth_level, handlerOffset: r.handler_offset, name: r.name, help: r.help, groupName: r.group_name, reserved: r.reserved },
      `${name}: command ${i}`,
    );
  });
  t.is(img.mailboxes.length, meta.mailboxes.length);
  img.mailboxes.forEach((m, i) => {
    const r = meta.mailboxes[i];
    t.is(m.target, r.target);
    t.is(m.capacity, r.queue_depth, `${name}: mailbox ${i} capacity (0 = executive default)`);
    t.is(m.mode, r.mode_mask);
    t.deepEqual(m.source, r.raw, `${name}: mailbox ${i} JSON kept verbatim`);
    t.deepEqual(m.extra?.bindings ?? [], r.bindings);
    t.is(m.extra?.owner_pid ?? null, r.owner_pid);
  });
  t.is(img.bodyEnd, img.size, `${name}: toolchain images have no trailing bytes`);
  t.false(img.warnings.some((w) => w.reason === 'trailing_bytes'));
}

for (const name of names) {
  test(`${name}: parses field for field as the reference JSON says`, (t) => {
    const r = parseImage(fixture(name));
    if (!r.ok) return t.fail(`${name}: ${r.error.reason}: ${r.error.message}`);
    checkAgainstReference(t, name, r.value);
  });

  test(`${name}: strip() gives what the reference VM loads (entry, code, rodata, bss)`, (t) => {
    const r = parseImage(fixture(name));
    if (!r.ok) return t.fail(r.error.message);
    const s = strip(r.value);
    const ref = fixtureJson(name).reference.load_hxe_bytes;
    t.deepEqual({ entry: s.entry, code: hex(s.code), rodata: hex(s.rodata), bss: s.bssSize }, { entry: ref.header.entry, code: ref.code_hex, rodata: ref.rodata_hex, bss: ref.header.bss_size });
    t.false('values' in s || 'mailboxes' in s || 'header' in s, 'no metadata reaches the VM');
    const vm = fixtureJson(name).reference.vm_load_from_path;
    if (vm.ok) t.deepEqual({ entry: s.entry, code_len: s.code.length, ro_len: s.rodata.length, bss: s.bssSize }, { entry: vm.result.entry, code_len: vm.result.code_len, ro_len: vm.result.ro_len, bss: vm.result.bss });
  });

  test(`${name}: streaming in 7-byte chunks (the reference's chunk size) gives the same image`, (t) => {
    const bytes = fixture(name);
    const sv = new StreamingVerifier();
    for (let i = 0; i < bytes.length; i += 7) t.is(sv.push(bytes.subarray(i, i + 7)), null);
    const r = sv.finish();
    t.deepEqual(r, parseImage(bytes));
  });
}

test('t04_value_cmd.hxe (crashes the reference: a command with a name but no help) loads with help = null', (t) => {
  const ref = fixtureJson('t04_value_cmd.hxe').reference;
  t.false(ref.vm_load_from_path.ok, 'the reference full load fails on it');
  const r = parseImage(fixture('t04_value_cmd.hxe'));
  if (!r.ok) return t.fail(r.error.message);
  const calibrate = r.value.commands.find((c) => c.name === 'calibrate');
  t.truthy(calibrate);
  t.is(calibrate?.help, null);
  t.is(calibrate?.groupName, 'control');
  t.deepEqual(r.value.values.map((v) => [v.group, v.id]), [[1, 2], [1, 3], [2, 1]]);
});

test('t06: rodata of 3 bytes puts the table at an unaligned offset; accepted with a ro_len warning', (t) => {
  const r = parseImage(fixture('t06_all_meta_rodata3.hxe'));
  if (!r.ok) return t.fail(r.error.message);
  t.is(r.value.header.metaOffset, 111);
  t.deepEqual(r.value.warnings.map((w) => w.reason), ['ro_len_unaligned']);
  t.is(r.value.commands[0]?.help, '', 'an explicit empty help string stays "" (not null)');
});
