"""Caches bounded by bytes, not only by entries.

The codecs remember parsed values because a message crosses four hops and is read on each
(the receiver, the trace, the outcome): the same header values and bodies come back dozens of
times per call. ``functools.lru_cache`` bounds only the number of entries, so a peer sending
distinct 1 MiB messages pinned 512 of them, 1 GB, in a cache keyed by whole messages.
:func:`cached` keeps ``lru_cache``'s speed (the lookup stays in C) for arguments up to
``max_key`` characters or bytes in all and computes larger ones every time, so what a cache can
hold is at most ``maxsize × max_key`` plus the values, whatever arrives. (cachetools bounds by the
size of the *values*; here the key, the text parsed, is what a peer makes large.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class SizedCache(Generic[_P, _T]):
    """``fn`` remembered for calls whose text and bytes arguments total at most ``max_key``."""

    def __init__(self, fn: Callable[_P, _T], maxsize: int, max_key: int) -> None:
        self._fn = fn
        self._memo = functools.lru_cache(maxsize=maxsize)(fn)
        self.maxsize = maxsize
        self.max_key = max_key
        functools.update_wrapper(self, fn)

    @property
    def max_bytes(self) -> int:
        """The most key bytes (characters) the cache can hold."""
        return self.maxsize * self.max_key

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        size = 0
        for arg in args:
            if isinstance(arg, str | bytes):
                size += len(arg)
        if size <= self.max_key and not kwargs:
            return self._memo(*args)
        return self._fn(*args, **kwargs)

    def cache_info(self) -> functools._CacheInfo:
        return self._memo.cache_info()

    def cache_clear(self) -> None:
        self._memo.cache_clear()


def cached(maxsize: int, max_key: int) -> Callable[[Callable[_P, _T]], SizedCache[_P, _T]]:
    """Decorator: :class:`SizedCache` of ``maxsize`` entries of at most ``max_key`` each."""

    def wrap(fn: Callable[_P, _T]) -> SizedCache[_P, _T]:
        return SizedCache(fn, maxsize, max_key)

    return wrap


_K = TypeVar("_K", bound=str | bytes)


class TextMemo(dict[_K, _T]):
    """``fn`` of one text (str or bytes) remembered in a plain dict, for the hottest lookups:
    a hit is one ``memo.get(text)``, which callers may make inline (a C call) before calling
    the memo itself on a miss, where :class:`SizedCache` costs a Python call on every hit.
    Bounded like it: texts up to ``max_key`` characters or bytes, at most ``maxsize`` of them;
    when full it is emptied (no recency to keep up on each hit: what is in use comes back at
    once). Exceptions are not remembered."""

    def __init__(self, fn: Callable[[_K], _T], maxsize: int, max_key: int) -> None:
        super().__init__()
        self._fn: Callable[[_K], _T] = fn
        self.maxsize = maxsize
        self.max_key = max_key
        self.__doc__ = fn.__doc__

    @property
    def max_bytes(self) -> int:
        """The most key bytes (characters) the memo can hold."""
        return self.maxsize * self.max_key

    def __call__(self, text: _K) -> _T:
        if text in self:
            found: _T = self[text]
            return found
        value = self._fn(text)
        if len(text) <= self.max_key:
            if len(self) >= self.maxsize:
                self.clear()
            self[text] = value
        return value


def memo(maxsize: int, max_key: int) -> Callable[[Callable[[_K], _T]], TextMemo[_K, _T]]:
    """Decorator: :class:`TextMemo` of ``maxsize`` texts of at most ``max_key`` each."""

    def wrap(fn: Callable[[_K], _T]) -> TextMemo[_K, _T]:
        return TextMemo(fn, maxsize, max_key)

    return wrap
