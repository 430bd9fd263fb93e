/**
 * An intrusive doubly linked list, for sets of objects that come and go with every request (the
 * requests in flight, the idle upstream sockets by age). A long-lived Map or Set with an add and a
 * delete per request rehashes its table again and again, and JSC promotes each new table to the
 * old generation, which then fills with dead ones: 18 full collections in 3 s of small requests
 * instead of 2 (measured with BUN_JSC_logGC). Links live in the items, so nothing is allocated.
 */
export interface Linked<T> {
  prev: T | null;
  next: T | null;
}

export class LinkedList<T extends Linked<T>> {
  /** The first pushed (oldest) item still in the list. */
  first: T | null = null;
  last: T | null = null;
  size = 0;

  push(item: T): void {
    // Pushed twice, an item would corrupt the links and the size: a caller's bug, said loudly.
    if (item.prev !== null || item.next !== null || this.first === item)
      throw new Error("item is already in the list");
    item.prev = this.last;
    item.next = null;
    if (this.last) this.last.next = item;
    else this.first = item;
    this.last = item;
    this.size++;
  }

  /** Removes `item` if it is in the list. */
  remove(item: T): void {
    if (item.prev === null && item.next === null && this.first !== item) return;
    if (item.prev) item.prev.next = item.next;
    else this.first = item.next;
    if (item.next) item.next.prev = item.prev;
    else this.last = item.prev;
    item.prev = item.next = null;
    this.size--;
  }

  *[Symbol.iterator](): Generator<T> {
    for (let item = this.first; item !== null; item = item.next) yield item;
  }
}
