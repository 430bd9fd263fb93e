/** The intrusive list behind the activity board and the upstream pool's age order. */
import { expect, test } from "bun:test";
import { LinkedList, type Linked } from "../src/linked-list.ts";

interface Item extends Linked<Item> {
  n: number;
}
const item = (n: number): Item => ({ n, prev: null, next: null });

test("push keeps age order; remove unlinks first, middle, last, and ignores what is not in it", () => {
  const list = new LinkedList<Item>();
  const xs = [1, 2, 3, 4].map(item);
  for (const x of xs) list.push(x);
  expect([...list].map((x) => x.n)).toEqual([1, 2, 3, 4]);
  list.remove(xs[1] as Item);
  list.remove(xs[1] as Item);
  list.remove(item(9));
  expect([...list].map((x) => x.n)).toEqual([1, 3, 4]);
  expect(list.size).toBe(3);
  list.remove(xs[0] as Item);
  list.remove(xs[3] as Item);
  expect(list.first?.n).toBe(3);
  expect(list.last?.n).toBe(3);
  list.remove(xs[2] as Item);
  expect([...list]).toEqual([]);
  expect(list.size).toBe(0);
  expect(list.first).toBeNull();
  list.push(xs[1] as Item);
  expect([...list].map((x) => x.n)).toEqual([2]);
  expect(() => list.push(xs[1] as Item)).toThrow(/already in the list/);
  expect(list.size).toBe(1);
});
