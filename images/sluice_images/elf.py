"""ELF: which libraries a binary needs, so a missing package fails the build, not the pod."""

import struct

from . import Failure
from .rootfs import norm, resolve

MULTIARCH = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}


ELF_MACHINE = {"amd64": 62, "arm64": 183}



def elf_needs(path):
    """(e_machine, interpreter, [DT_NEEDED names]) of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise Failure(f"{path}: not a 64-bit little-endian ELF file")
    machine, = struct.unpack_from("<H", data, 0x12)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic, interp = [], None, None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return machine, interp, []

    def offset(vaddr):
        for start, off, size in loads:
            if start <= vaddr < start + size:
                return off + vaddr - start
        raise Failure(f"{path}: address {vaddr:#x} outside the loaded segments")

    needed, strtab = [], None
    for i in range(0, dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, dynamic[0] + i)
        if tag == 0:
            break
        if tag == 1:
            needed.append(value)
        elif tag == 5:
            strtab = offset(value)
    if strtab is None:
        raise Failure(f"{path}: dynamic section without a string table")

    def string(at):
        return data[at:data.index(b"\0", at)].decode()

    return machine, interp, [string(strtab + n) for n in needed]



def check_libraries(tree, arch, binary):
    machine, interp, needed = elf_needs(binary)
    if ELF_MACHINE.get(arch) != machine:
        raise Failure(f"{binary} is for ELF machine {machine}, the locked packages are {arch}")
    if interp is not None and resolve(tree, norm(interp)) is None:
        raise Failure(f"{binary} wants the loader {interp}, which the base lacks")
    triplet = MULTIARCH.get(arch, "")
    search = [f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib"]
    for lib in needed:
        if not any(resolve(tree, f"{d}/{lib}") for d in search):
            raise Failure(f"{binary} needs {lib}, which no package in images/packages.lock "
                          "provides: add its package to the lock (images/build --update-lock)")
    return needed

