# Builds and installs libmicrosandbox_agent the way C users expect:
#
#   make                                     # cargo build --release -p microsandbox-agent
#   make install PREFIX=/usr/local DESTDIR=  # library, header, pkg-config file
#   make uninstall PREFIX=... DESTDIR=...
#   make docs                                # HTML API reference (doxygen) in target/doc-c/html
#   make check                               # scripts/test-install.sh
#
# Why a Makefile rather than cargo-c (`cargo cinstall`): cargo-c is a separate
# tool that CI and every developer would have to compile first, for about
# the same result as the few install lines below; make, install and ln are
# already on every machine that builds C.

PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
CARGO ?= cargo
INSTALL ?= install

LIB := microsandbox_agent
BUILD_DIR := target/release

# The version has one source, Cargo.toml's [package] table.
VERSION := $(shell awk -F'"' '/^\[/ { in_package = ($$0 == "[package]") } in_package && /^version *=/ { print $$2; exit }' Cargo.toml)
VERSION_MAJOR := $(word 1,$(subst ., ,$(VERSION)))
VERSION_MINOR := $(word 2,$(subst ., ,$(VERSION)))
# ABI policy, the same rule as build.rs: before 1.0 a minor release may break
# callers, so the soname carries MAJOR.MINOR; from 1.0 on, MAJOR alone.
ABI_VERSION := $(if $(filter 0,$(VERSION_MAJOR)),0.$(VERSION_MINOR),$(VERSION_MAJOR))
SONAME := lib$(LIB).so.$(ABI_VERSION)
REAL_NAME := lib$(LIB).so.$(VERSION)

# In the .pc file, paths under PREFIX are written relative to ${prefix} so
# `pkg-config --define-prefix` can relocate an unpacked tree.
PC_LIBDIR := $(patsubst $(PREFIX)%,$${prefix}%,$(LIBDIR))
PC_INCLUDEDIR := $(patsubst $(PREFIX)%,$${prefix}%,$(INCLUDEDIR))

.PHONY: all build install uninstall docs check print-version print-soname

all: build

# The library package alone: a workspace build would unify its dependency
# features with the development relay's (tokio process and signal).
build:
	$(CARGO) build --release -p microsandbox-agent

install: build
	@test -n "$(VERSION)" || { echo "error: no version found in Cargo.toml" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	$(INSTALL) -m 0755 $(BUILD_DIR)/lib$(LIB).so $(DESTDIR)$(LIBDIR)/$(REAL_NAME)
	ln -sfn $(REAL_NAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(LIBDIR)/lib$(LIB).so
	$(INSTALL) -m 0644 $(BUILD_DIR)/lib$(LIB).a $(DESTDIR)$(LIBDIR)/lib$(LIB).a
	$(INSTALL) -m 0644 include/$(LIB).h $(DESTDIR)$(INCLUDEDIR)/$(LIB).h
	sed -e 's|@PREFIX@|$(PREFIX)|g' \
	    -e 's|@LIBDIR@|$(PC_LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(PC_INCLUDEDIR)|g' \
	    -e 's|@VERSION@|$(VERSION)|g' \
	    $(LIB).pc.in > $(DESTDIR)$(PKGCONFIGDIR)/$(LIB).pc
	chmod 0644 $(DESTDIR)$(PKGCONFIGDIR)/$(LIB).pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(REAL_NAME) $(DESTDIR)$(LIBDIR)/$(SONAME) \
	      $(DESTDIR)$(LIBDIR)/lib$(LIB).so $(DESTDIR)$(LIBDIR)/lib$(LIB).a \
	      $(DESTDIR)$(INCLUDEDIR)/$(LIB).h $(DESTDIR)$(PKGCONFIGDIR)/$(LIB).pc

docs:
	@command -v doxygen >/dev/null 2>&1 || { \
	  echo "error: doxygen not found; install it (Debian/Ubuntu: apt-get install doxygen) and rerun make docs" >&2; \
	  exit 1; }
	@mkdir -p target/doc-c
	MSB_VERSION=$(VERSION) doxygen docs/Doxyfile
	@echo "API reference: target/doc-c/html/index.html"

check:
	scripts/test-install.sh

# For scripts: the values the install uses.
print-version:
	@echo $(VERSION)

print-soname:
	@echo $(SONAME)
