# SPDX-License-Identifier: MIT
# Sourced by scripts/device/run.sh (bash): unpack the carried .devdeps/*.deb under a prefix (never
# into /: one Debian package ships a ./lib/ folder that would replace Ubuntu's /lib symlink) and
# point the library path, pkg-config and CMake at it. Sets DD (the prefix; DEVDEPS_PREFIX overrides
# /opt/devdeps, so the same steps can be reproduced on the development machine in a scratch folder)
# and exports LD_LIBRARY_PATH, PKG_CONFIG_PATH and, when the machine has no pkg-config, PATH. Sets
# NCU: the Nsight Compute command line, empty where there is none.
#
# cpp-httplib: Debian's libcpp-httplib0.11 is a compiled library built with OpenSSL, zlib and
# Brotli support; its cpp-httplib.pc carries
#   Cflags: -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
# and with those defines httplib.h includes <openssl/ssl.h>, <zlib.h> and <brotli/decode.h>. The
# defines cannot be dropped: they change the library's class layouts (httplib::Request ends with
# `const SSL* ssl` under CPPHTTPLIB_OPENSSL_SUPPORT), so code compiled without them would disagree
# with libcpp-httplib.so. The GPU machine (Ubuntu 24.04) has none of those headers, hence the
# headers travel in .devdeps: libssl-dev, zlib1g-dev, libbrotli-dev, plus libbrotli1 (the runtime
# libcpp-httplib.so needs and the linker resolves through LD_LIBRARY_PATH; libssl.so.3 and libz.so.1
# are Ubuntu's own). OpenSSL's configuration.h lives in include/x86_64-linux-gnu, which is added to
# the unpacked cpp-httplib.pc's Cflags. Requires.private (openssl, zlib, brotli .pc files) is
# dropped: a shared link does not need it.

DD=${DEVDEPS_PREFIX:-/opt/devdeps}
mkdir -p "$DD"
for f in .devdeps/*.deb; do dpkg -x "$f" "$DD"; done
mkdir -p /usr/share/glog && cp -r "$DD/usr/share/glog/cmake" /usr/share/glog/ 2>/dev/null
export LD_LIBRARY_PATH=$DD/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
if ! command -v pkg-config >/dev/null; then export PATH=$DD/usr/bin:$PATH; fi
for pc in "$DD"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc; do sed -i "s|^prefix=.*|prefix=$DD/usr|" "$pc"; done
httplib_pc=$DD/usr/lib/x86_64-linux-gnu/pkgconfig/cpp-httplib.pc
if [[ -f $httplib_pc ]]; then
  sed -i '/^Requires.private/d' "$httplib_pc"
  grep -q 'include/x86_64-linux-gnu' "$httplib_pc" || sed -i 's|^Cflags: -I${includedir}|& -I${includedir}/x86_64-linux-gnu|' "$httplib_pc"
  for h in openssl/ssl.h zlib.h brotli/decode.h; do
    [[ -f $DD/usr/include/$h || -f /usr/include/$h ]] || echo "devdeps: <$h> missing: v4rt (cpp-httplib) will not compile; see scripts/device/devdeps.sh"
  done
fi
export PKG_CONFIG_PATH=$DD/usr/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
